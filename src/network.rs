//! The network being trained or evaluated: its variables (weights and BatchNorm statistics) on
//! the compute device, and how batches reach it (through pinned memory on CUDA, under bf16
//! autocast when asked).

use anyhow::Result;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::model::{Model, Regularization};
use lossbench_core::config::Arch;

pub struct Network {
    pub vs: VarStore,
    pub model: Model,
    pub device: Device,
    /// The forward pass runs under bf16 autocast (CUDA only).
    pub bf16: bool,
}

impl Network {
    /// A network of `arch` initialised from `seed` (on the CPU, so the weights are the seed's
    /// on any device), then moved to `device`.
    pub fn new(arch: Arch, seed: u64, reg: Regularization, device: Device, bf16: bool) -> Network {
        let mut vs = VarStore::new(Device::Cpu);
        let model = Model::new(&vs.root(), arch, seed, reg);
        vs.set_device(device);
        Network {
            vs,
            model,
            device,
            bf16,
        }
    }

    /// Every variable (weights and BatchNorm statistics), sorted by name.
    pub fn named_variables(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The trainable variables (`true`) or the others (BatchNorm statistics and counters),
    /// sorted by name.
    pub fn variables_by_name(&self, trainable: bool) -> Vec<(String, Tensor)> {
        let mut v = self.named_variables();
        v.retain(|(_, t)| t.requires_grad() == trainable);
        v
    }

    /// The current weights, copied to the CPU, by name.
    pub fn weights(&self) -> Vec<(String, Tensor)> {
        self.named_variables()
            .into_iter()
            .map(|(n, t)| (n, t.detach().to_device(Device::Cpu)))
            .collect()
    }

    /// Overwrites every variable with saved tensors of the same names (checked first).
    pub fn restore(&self, saved: &[(String, Tensor)], what: &std::path::Path) -> Result<()> {
        crate::checkpoint::copy_into(&self.named_variables(), saved, what)
    }

    /// Moves a batch tensor to the compute device: on CUDA through pinned memory with a
    /// non-blocking copy, so the transfer overlaps the compute already queued.
    pub fn to_device(&self, t: &Tensor) -> Tensor {
        match self.device {
            device if t.device() == device => t.shallow_clone(),
            device => t
                .pin_memory(device)
                .to_device_(device, t.kind(), true, false),
        }
    }

    /// The logits of z-scored band groups, under bf16 autocast when configured; batch
    /// statistics and dropout when `train`.
    pub fn forward(&self, inputs: &[Tensor; 3], train: bool) -> Tensor {
        let x = [
            self.to_device(&inputs[0]),
            self.to_device(&inputs[1]),
            self.to_device(&inputs[2]),
        ];
        let run = || self.model.forward_t(&x, train);
        if self.bf16 {
            tch::autocast(true, run).to_kind(tch::Kind::Float)
        } else {
            run()
        }
    }
}
