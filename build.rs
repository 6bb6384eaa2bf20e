//! Lets the trainer find libtorch at run time without LD_LIBRARY_PATH (an rpath to LIBTORCH's
//! lib folder), and keeps libtorch_cuda linked when the libtorch has it: nothing calls it
//! directly, so `--as-needed` would drop it and CUDA would look unavailable.

use std::path::PathBuf;

fn main() {
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
