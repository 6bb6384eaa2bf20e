//! The compute device: choosing it, how much memory it and the host have free, and what
//! libtorch this process loaded (`trainer env`, docs/cluster.md).

use std::ffi::{CStr, c_void};

use anyhow::{Result, bail};
use serde::Serialize;
use tch::Device;

use lossbench_core::config::DeviceChoice;

/// The compute device; each rank on a node takes its own GPU (`local_rank` modulo the GPUs it
/// sees, so `CUDA_VISIBLE_DEVICES` set per task by SLURM also works). Asking for CUDA where
/// libtorch finds none is an error, never a silent fall-back to the CPU.
pub fn resolve(choice: DeviceChoice, local_rank: usize) -> Result<Device> {
    let gpu = || Device::Cuda(local_rank % tch::Cuda::device_count().max(1) as usize);
    Ok(match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Auto if tch::Cuda::is_available() => gpu(),
        // A job that asked for GPUs and sees none would silently train on the CPU for days.
        DeviceChoice::Auto => match requested_gpus() {
            Some((var, value)) => bail!(
                "run.device = \"auto\" in a job that asked for GPUs ({var}={value}) but libtorch \
                 finds no CUDA device ({}); set run.device = \"cpu\" to train on the CPU anyway",
                cuda_absence()
            ),
            None => Device::Cpu,
        },
        DeviceChoice::Cuda if tch::Cuda::is_available() => gpu(),
        DeviceChoice::Cuda => bail!(
            "run.device = \"cuda\" but libtorch finds no CUDA device ({}); see `trainer env`",
            cuda_absence()
        ),
    })
}

/// Why libtorch sees no GPU, as far as this process can tell.
fn cuda_absence() -> String {
    match loaded_library("libtorch_cuda") {
        Some(path) => {
            format!("libtorch_cuda is loaded from {path}, so no GPU is visible to this process")
        }
        None => "this trainer runs without libtorch_cuda: build it against a CUDA libtorch \
                 (docs/cluster.md)"
            .into(),
    }
}

/// A device as `run.json` and the logs name it: `cpu` or `cuda:<index>`.
pub fn name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Cpu => "cpu".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The GPUs a SLURM job or its launcher asked for, when it did: the variable that says so and
/// its value.
fn requested_gpus() -> Option<(&'static str, String)> {
    [
        "SLURM_GPUS_ON_NODE",
        "SLURM_GPUS_PER_TASK",
        "SLURM_JOB_GPUS",
        "SLURM_STEP_GPUS",
    ]
    .into_iter()
    .find_map(|var| {
        let v = std::env::var(var).ok()?;
        let none = v.is_empty() || v == "0" || v.eq_ignore_ascii_case("none");
        (!none).then_some((var, v))
    })
}

/// The path of a loaded shared library whose file name starts with `prefix` (Linux).
pub fn loaded_library(prefix: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.rsplit('/').next().is_some_and(|f| f.starts_with(prefix)))
        .map(str::to_string)
}

/// A function of the CUDA runtime, if this process has it loaded (libtorch_cpu links it).
fn cuda_runtime_fn(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT only looks a symbol up in the loaded libraries.
    let f = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!f.is_null()).then_some(f)
}

/// Free and total memory of a GPU in bytes (`cudaMemGetInfo`); `None` without CUDA.
pub fn gpu_memory(index: usize) -> Option<(u64, u64)> {
    if !tch::Cuda::is_available() {
        return None;
    }
    type SetDevice = unsafe extern "C" fn(i32) -> i32;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> i32;
    let set = cuda_runtime_fn(c"cudaSetDevice")?;
    let info = cuda_runtime_fn(c"cudaMemGetInfo")?;
    let (mut free, mut total) = (0usize, 0usize);
    // SAFETY: the CUDA runtime's documented C signatures; a non-zero status is an error.
    let ok = unsafe {
        let set: SetDevice = std::mem::transmute(set);
        let info: MemGetInfo = std::mem::transmute(info);
        set(index as i32) == 0 && info(&mut free, &mut total) == 0
    };
    ok.then_some((free as u64, total as u64))
}

/// Memory this process may still use on the host: the smaller of the kernel's `MemAvailable`
/// and what its cgroup (a SLURM job's memory limit) has left.
pub fn host_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let available = meminfo
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()?
        * 1024;
    Some(cgroup_headroom().map_or(available, |h| h.min(available)))
}

/// The cgroup memory limit minus its current use (v2, else v1); `None` when unlimited.
fn cgroup_headroom() -> Option<u64> {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let (limit, usage) = if controllers.is_empty() {
            let dir = format!("/sys/fs/cgroup{path}");
            (
                read(&format!("{dir}/memory.max")),
                read(&format!("{dir}/memory.current")),
            )
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = format!("/sys/fs/cgroup/memory{path}");
            (
                read(&format!("{dir}/memory.limit_in_bytes")),
                read(&format!("{dir}/memory.usage_in_bytes")),
            )
        } else {
            continue;
        };
        // v1 writes "unlimited" as a huge number; v2 as "max" (not a number).
        if let (Some(limit), Some(usage)) = (limit, usage)
            && limit < (1 << 60)
        {
            return Some(limit.saturating_sub(usage));
        }
    }
    None
}

/// What `trainer env` reports: the libtorch and devices this process sees.
#[derive(Debug, Serialize)]
pub struct Environment {
    pub tch_torch_version: &'static str,
    pub libtorch_cpu: Option<String>,
    pub libtorch_cuda: Option<String>,
    pub cuda_available: bool,
    pub cudnn_available: bool,
    pub gpus: Vec<GpuInfo>,
    pub cpu_threads: i32,
    pub host_available_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct GpuInfo {
    pub index: usize,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

impl Environment {
    pub fn probe() -> Environment {
        let count = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        Environment {
            tch_torch_version: TORCH_VERSION,
            libtorch_cpu: loaded_library("libtorch_cpu"),
            libtorch_cuda: loaded_library("libtorch_cuda"),
            cuda_available: tch::Cuda::is_available(),
            cudnn_available: tch::Cuda::cudnn_is_available(),
            gpus: (0..count)
                .filter_map(|index| {
                    gpu_memory(index).map(|(free_bytes, total_bytes)| GpuInfo {
                        index,
                        free_bytes,
                        total_bytes,
                    })
                })
                .collect(),
            cpu_threads: tch::get_num_threads(),
            host_available_bytes: host_available(),
        }
    }
}

/// The PyTorch release this build's tch binds (tch 0.24).
pub const TORCH_VERSION: &str = "2.11.0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_always_there_and_cuda_is_never_faked() {
        assert_eq!(resolve(DeviceChoice::Cpu, 3).unwrap(), Device::Cpu);
        let env = Environment::probe();
        assert!(
            env.libtorch_cpu
                .as_deref()
                .is_some_and(|p| p.contains("libtorch_cpu")),
            "{env:?}"
        );
        assert!(env.host_available_bytes.is_some_and(|b| b > 0));
        if !tch::Cuda::is_available() {
            let e = resolve(DeviceChoice::Cuda, 0).unwrap_err().to_string();
            assert!(e.contains("no CUDA device"), "{e}");
            assert_eq!(resolve(DeviceChoice::Auto, 0).unwrap(), Device::Cpu);
            assert!(gpu_memory(0).is_none() && env.gpus.is_empty());
        }
    }
}
