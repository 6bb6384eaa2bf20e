//! libtorch reports errors by panicking inside tch's infallible calls (the forward and backward
//! passes, tensor moves). They are caught here, at one place per optimizer step and per
//! evaluated batch, and become errors that say what failed: an out-of-memory names the batch
//! and what to change; anything else is an internal error with its message and place. The
//! binary's panic hook records each panic's message and location for this ([`install_hook`]).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

/// The last panic's message and location, recorded by the hook.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Records every panic's message and location; panics of threads other than the main one are
/// also printed, since nothing catches them (the main thread's are reported by whoever catches
/// them, with their context).
pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = panic_text(info.payload());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()));
        let text = format!("{message}{}", at.unwrap_or_default());
        if std::thread::current().name() != Some("main") {
            eprintln!(
                "thread {:?} panicked: {text}",
                std::thread::current().name()
            );
        }
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
    }));
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// What a caught panic was.
#[derive(Debug, Clone, PartialEq)]
pub enum Caught {
    /// Memory ran out (a CUDA allocation, or a host allocation under a memory limit).
    OutOfMemory(String),
    /// Any other libtorch error or panic, with its message and where it happened.
    Internal(String),
}

impl Caught {
    /// A panic or libtorch error caught outside the places that catch their own: an
    /// [`Internal`] failure of `run` while `doing` (e.g. `training or testing`).
    pub fn internal(&self, run: &str, doing: &str) -> anyhow::Error {
        anyhow::Error::new(Internal {
            run: run.to_string(),
            doing: doing.to_string(),
            message: self.message().to_string(),
        })
    }

    pub fn message(&self) -> &str {
        match self {
            Caught::OutOfMemory(m) | Caught::Internal(m) => m,
        }
    }
}

/// Whether a libtorch message reports exhausted memory: CUDA's caching allocator, the CPU
/// allocator refused by the system, or oneDNN unable to allocate a convolution's workspace
/// (which it reports as a primitive it could not create).
pub fn is_out_of_memory(message: &str) -> bool {
    let m = message.to_lowercase();
    [
        "out of memory",
        "can't allocate memory",
        "bad_alloc",
        "could not create a primitive",
    ]
    .iter()
    .any(|s| m.contains(s))
}

/// A libtorch error's message without its C++ stack (`frame #0: ...`, dozens of lines) and
/// without tch's `called Result::unwrap()` wrapping: what went wrong and where, on one line.
fn concise(text: &str) -> String {
    let text = text.split("\\nframe #").next().unwrap_or(text);
    let text = text.split("\nframe #").next().unwrap_or(text);
    let text = text
        .strip_prefix("called `Result::unwrap()` on an `Err` value: Torch(\"")
        .unwrap_or(text);
    text.replace("\\n", " ").trim().to_string()
}

/// Runs `f`; a panic inside it (a libtorch error) is returned as [`Caught`].
pub fn catch<T>(f: impl FnOnce() -> T) -> Result<T, Caught> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let recorded = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).take();
        let text = concise(&recorded.unwrap_or_else(|| panic_text(payload.as_ref())));
        if is_out_of_memory(&text) {
            Caught::OutOfMemory(text)
        } else {
            Caught::Internal(text)
        }
    })
}

/// An optimizer step or an evaluation ran out of memory: what it was doing and what to change.
#[derive(Debug, thiserror::Error)]
#[error(
    "{run}: out of memory {doing} ({batch}) on {device}{memory}; the newest checkpoint is intact. \
     {advice}\nlibtorch: {message}"
)]
pub struct OutOfMemory {
    pub run: String,
    /// e.g. `in epoch 3, step 12`.
    pub doing: String,
    /// e.g. `batch 1024 in micro-batches of 512`.
    pub batch: String,
    pub device: String,
    /// e.g. `, 79.1 of 80.0 GiB in use`.
    pub memory: String,
    pub advice: String,
    pub message: String,
}

/// Any other libtorch error or panic in a run.
#[derive(Debug, thiserror::Error)]
#[error("{run}: internal error {doing}: {message}")]
pub struct Internal {
    pub run: String,
    pub doing: String,
    pub message: String,
}

/// What was being done when a libtorch error was caught, for its message.
pub struct Context {
    /// The run folder.
    pub run: String,
    /// e.g. `in epoch 3, step 12` or `evaluating the validation split`.
    pub doing: String,
    /// e.g. `batch 1024 in micro-batches of 512`.
    pub batch: String,
    pub device: tch::Device,
    /// What to change when memory runs out.
    pub advice: String,
}

impl Context {
    /// The error for a caught libtorch failure.
    pub fn error(&self, caught: Caught) -> anyhow::Error {
        match caught {
            Caught::OutOfMemory(message) => OutOfMemory {
                run: self.run.clone(),
                doing: self.doing.clone(),
                batch: self.batch.clone(),
                device: format!("{:?}", self.device).to_lowercase(),
                memory: memory_in_use(self.device),
                advice: self.advice.clone(),
                message,
            }
            .into(),
            Caught::Internal(message) => Internal {
                run: self.run.clone(),
                doing: self.doing.clone(),
                message,
            }
            .into(),
        }
    }
}

/// This process's virtual-memory limit (RLIMIT_AS), if it has one.
fn virtual_memory_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// `, U of T GiB in use` for a GPU, `, A GiB still available` for the host.
fn memory_in_use(device: tch::Device) -> String {
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match device {
        tch::Device::Cuda(i) => crate::device::gpu_memory(i)
            .map_or(String::new(), |(free, total)| {
                format!(", {:.1} of {:.1} GiB in use", gib(total - free), gib(total))
            }),
        _ => {
            let limit = virtual_memory_limit().map_or(String::new(), |l| {
                format!(
                    " under a virtual-memory limit of {:.1} GiB (ulimit -v),",
                    gib(l)
                )
            });
            crate::device::host_available().map_or(limit.clone(), |a| {
                format!(",{limit} {:.1} GiB of host memory still available", gib(a))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtorch_errors_are_caught_and_classified() {
        install_hook();
        let caught = catch(|| {
            let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, tch::Device::Cpu));
            let b = tch::Tensor::zeros([4, 5], (tch::Kind::Float, tch::Device::Cpu));
            a.matmul(&b)
        })
        .unwrap_err();
        match &caught {
            Caught::Internal(m) => assert!(m.contains("mat1 and mat2 shapes"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(is_out_of_memory(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.1 GiB"
        ));
        assert!(is_out_of_memory(
            "DefaultCPUAllocator: can't allocate memory: you tried"
        ));
        assert_eq!(catch(|| 3).unwrap(), 3);
        let torch = r#"called `Result::unwrap()` on an `Err` value: Torch("[enforce fail at alloc_cpu.cpp:127] can't allocate memory\nframe #0: c10::Throw(...)\nframe #1: ...") at tensor.rs:300"#;
        assert_eq!(
            concise(torch),
            "[enforce fail at alloc_cpu.cpp:127] can't allocate memory"
        );
        let _ = std::panic::take_hook();
    }
}
