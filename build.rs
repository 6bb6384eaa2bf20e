//! Lets the trainer find libtorch at run time without LD_LIBRARY_PATH (an rpath to LIBTORCH's
//! lib folder), and keeps libtorch_cuda linked when the libtorch has it: nothing calls it
//! directly, so `--as-needed` would drop it and CUDA would look unavailable. Also records the
//! code revision (git) that each run folder names, so results say what code made them, and
//! compiles TensorBoard's vendored event protocol buffers (src/tensorboard/proto/SOURCE.md).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    for path in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let revision = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev)
            if git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty()) =>
        {
            format!("{rev}-dirty")
        }
        Some(rev) => rev,
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=LOSSBENCH_REVISION={revision}");
    compile_tensorboard_protos();
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    let lib = libtorch.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// TensorBoard's `event.proto` and what it imports, compiled by protox (no `protoc` needed) into
/// prost types in `$OUT_DIR/tensorboard.rs`.
fn compile_tensorboard_protos() {
    let root = PathBuf::from("src/tensorboard/proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let event = "tensorboard/compat/proto/event.proto";
    let descriptors = protox::compile([event], [&root]).expect("TensorBoard's protos compile");
    prost_build::Config::new()
        .compile_fds(descriptors)
        .expect("prost generates TensorBoard's message types");
}
