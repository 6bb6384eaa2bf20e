//! Training throughput of the K-Branch CNN with the CE loss on data already in memory, for the
//! comparison with Python PyTorch in `make bench` (scripts/bench/torch_kbranch.py does the same
//! steps in Python):
//!
//!     cargo run --release --example train_bench -- [BATCH] [STEPS] [THREADS]

use std::time::Instant;

use lossbench::losses::Loss;
use lossbench::model::KBranch;
use lossbench::optim::Adam;
use tch::{Device, Kind, Tensor, nn};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (batch, steps, threads) = (args.first().copied().unwrap_or(256), args.get(1).copied().unwrap_or(5), args.get(2).copied().unwrap_or(2));
    tch::set_num_threads(threads as i32);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = KBranch::new(&vs.root(), 0);
    let mut adam = Adam::new(vs.trainable_variables().into_iter().map(|t| (t, 0.0)).collect(), 1e-4);
    let b = batch as i64;
    let o = (Kind::Float, Device::Cpu);
    let x = [Tensor::randn([b, 4, 120, 120], o), Tensor::randn([b, 6, 60, 60], o), Tensor::randn([b, 2, 20, 20], o)];
    let y = Tensor::rand([b, 19], o).lt(0.2).to_kind(Kind::Float);
    let loss = Loss::Ce;
    let mut step = || {
        adam.zero_grad();
        loss.compute(&model.forward_t(&x[0], &x[1], &x[2], true), &y).backward();
        adam.step();
    };
    step(); // warm-up: allocator and kernels
    let t = Instant::now();
    for _ in 0..steps {
        step();
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{{\"impl\": \"rust-tch\", \"batch\": {batch}, \"steps\": {steps}, \"threads\": {threads}, \"images_per_s\": {:.1}}}", (batch * steps) as f64 / secs);
}
