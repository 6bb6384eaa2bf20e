//! A conversion killed with SIGKILL midway leaves nothing that looks like a store; the rerun
//! finishes cleanly and gives the same store as an uninterrupted run.

mod common;

use std::time::{Duration, Instant};

use lossbench_core::layout::partial_path;
use lossbench_core::store::Store;

#[test]
fn kill_9_midway_leaves_no_complete_looking_store() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = common::synth(tmp.path(), 1200, 21, "v1");
    kill_and_rerun(tmp.path(), &archive, "folder");
    // The same from the archive packed as downloaded, read as a stream.
    let packed = common::pack_with_system_tar(&archive, &tmp.path().join("packed"), Some("gz"));
    kill_and_rerun(tmp.path(), &packed, "packed");
}

/// Kills a conversion once it writes shards; checks nothing looks complete; reruns it; checks
/// the result equals an uninterrupted run.
fn kill_and_rerun(tmp: &std::path::Path, archive: &std::path::Path, name: &str) {
    let out = tmp.join(format!("{name}.zarr"));
    let partial = partial_path(&out);
    let mut child = common::data_prep()
        .args([
            "--threads",
            "1",
            "convert",
            "--archive",
            archive.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .args(["--shard-patches", "16"])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until shards are being written, then kill.
    let started = Instant::now();
    while !partial.join("train/b10m/c/1/0/0/0").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no shard appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "conversion ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "a killed run must not leave the final store");
    assert!(partial.exists());
    let err = Store::open(&out)
        .err()
        .expect("the store must not open")
        .to_string();
    assert!(err.contains("interrupted"), "{err}");

    // Rerun: cleans the partial build and completes; identical to an uninterrupted run.
    common::convert(archive, &out, &["--shard-patches", "16"]);
    assert!(!partial.exists());
    let fresh = tmp.join(format!("{name}-fresh.zarr"));
    common::convert(archive, &fresh, &["--shard-patches", "16"]);
    common::assert_same_tree(&out, &fresh);
    assert_eq!(
        Store::open(&out).unwrap().attrs.accounting.accounted(),
        1200
    );
}
