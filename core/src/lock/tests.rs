use super::*;
use lease::flock;

/// A holder's lease file as another process wrote it.
fn foreign(file: &Path, process: Process, lease_s: Option<f64>, age: Duration) {
    let h = Holder {
        process,
        since: "2026-12-01T00:00:00Z".into(),
        purpose: "trainer train".into(),
        token: lease_s.map(|_| "other".to_string()),
        lease_s,
    };
    fs::write(file, h.to_json()).unwrap();
    File::options()
        .write(true)
        .open(file)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

fn on_node2() -> Process {
    Process {
        host: "node2".into(),
        pid: 4711,
        ..Process::me()
    }
}

#[test]
fn an_exclusive_holder_is_named_and_released_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    let held = try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
    let e = try_lock(&path, Mode::Exclusive, "trainer train").unwrap_err();
    let text = e.to_string();
    assert!(text.contains("is held by trainer train (host"), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    assert!(e.held_by_writer());
    assert!(try_lock(&path, Mode::Shared, "landscape").is_err());
    held.check().unwrap();
    drop(held);
    assert!(!path.exists(), "a released lock leaves no lease file");
    let a = try_lock(&path, Mode::Shared, "landscape").unwrap();
    let b = try_lock(&path, Mode::Shared, "landscape").unwrap();
    let e = try_lock(&path, Mode::Exclusive, "trainer train").unwrap_err();
    assert!(
        e.to_string().contains("held by other processes reading it"),
        "{e}"
    );
    assert!(!e.held_by_writer());
    assert!(
        !path.exists(),
        "a refused exclusive taker removes its lease file"
    );
    drop((a, b));
    try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
}

#[test]
fn a_waiting_lock_is_taken_once_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    let held = try_lock(&path, Mode::Exclusive, "collector merge").unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let release = std::thread::spawn(move || {
        rx.recv().unwrap();
        drop(held);
    });
    let mut waited = None;
    let lock = lock_waiting(&path, Mode::Exclusive, "collector merge", |e| {
        waited = Some(e.to_string());
        tx.send(()).unwrap();
    });
    release.join().unwrap();
    assert!(lock.is_ok());
    assert!(waited.unwrap().contains("is held by collector merge"));
}

/// A holder on this host whose process is gone (killed): taken over at once, whatever its
/// lease says.
#[test]
fn a_dead_holder_on_this_host_is_taken_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    let dead = Process {
        pid: 4_294_967,
        ..Process::me()
    };
    foreign(&path, dead, Some(3600.0), Duration::ZERO);
    let lock = try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
    lock.check().unwrap();
    // No break lock or set-aside file is left.
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, [".lock"]);
}

/// Another node's holder: its pid means nothing here; it holds while its lease runs, and is
/// taken over once the lease has expired (no SLURM job named).
#[test]
fn a_holder_on_another_node_holds_until_its_lease_expires() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    foreign(&path, on_node2(), Some(30.0), Duration::from_secs(5));
    let e = try_lock(&path, Mode::Exclusive, "trainer train").unwrap_err();
    assert!(e.to_string().contains("host node2"), "{e}");
    assert!(e.to_string().contains("lease was renewed"), "{e}");
    // A reader is refused too, and leaves nothing behind.
    assert!(try_lock(&path, Mode::Shared, "trainer landscape").is_err());
    assert_eq!(fs::read_dir(shared_dir(&path)).unwrap().count(), 0);
    foreign(&path, on_node2(), Some(30.0), Duration::from_secs(31));
    try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
}

/// Readers on another node hold a store against a writer while their leases run; expired ones
/// are removed.
#[test]
fn readers_elsewhere_hold_while_their_leases_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.zarr.lock");
    fs::create_dir_all(shared_dir(&path)).unwrap();
    let reader = shared_dir(&path).join("r1.json");
    foreign(&reader, on_node2(), Some(30.0), Duration::from_secs(1));
    let e = try_lock(&path, Mode::Exclusive, "data-prep convert").unwrap_err();
    assert!(e.to_string().contains("reading it"), "{e}");
    // --force: past readers, but never past a writer.
    let forced = try_lock_past_readers(&path, "data-prep convert --force").unwrap();
    assert!(try_lock_past_readers(&path, "data-prep convert --force").is_err());
    drop(forced);
    foreign(&reader, on_node2(), Some(30.0), Duration::from_secs(40));
    try_lock(&path, Mode::Exclusive, "data-prep convert").unwrap();
    assert!(!reader.exists());
}

/// A lock file of the version before leases (flock and JSON without token or lease): stale once
/// nobody holds its flock and it is older than a lease.
#[test]
fn an_older_versions_lock_file_is_judged_by_flock_and_age() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    foreign(&path, on_node2(), None, Duration::from_secs(5));
    assert!(try_lock(&path, Mode::Exclusive, "trainer train").is_err());
    foreign(&path, on_node2(), None, lease() + Duration::from_secs(5));
    let file = File::open(&path).unwrap();
    flock(&file, libc::LOCK_EX).unwrap();
    let e = try_lock(&path, Mode::Exclusive, "trainer train").unwrap_err();
    assert!(e.to_string().contains("flock"), "{e}");
    drop(file);
    try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
}

/// A holder whose lock another process took over (it judged the lease expired) learns it at
/// its next check.
#[test]
fn a_lock_taken_over_is_lost_for_its_old_holder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    let held = try_lock(&path, Mode::Exclusive, "trainer train").unwrap();
    foreign(&path, on_node2(), Some(30.0), Duration::ZERO);
    let e = held.check().unwrap_err();
    assert!(matches!(e, LockError::Lost { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("taken over by trainer train (host node2"),
        "{e}"
    );
    drop(held);
    assert!(
        path.exists(),
        "dropping a lost lock leaves the new holder's file"
    );
}

/// Threads of one process racing for one lock: never two holders at once.
#[test]
fn racing_takers_never_hold_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = Arc::new(dir.path().join(".lock"));
    let holders = Arc::new(AtomicU64::new(0));
    let taken = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (path, holders, taken) = (path.clone(), holders.clone(), taken.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if let Ok(lock) = try_lock(&path, Mode::Exclusive, "t") {
                        assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        taken.fetch_add(1, Ordering::SeqCst);
                        holders.fetch_sub(1, Ordering::SeqCst);
                        drop(lock);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(taken.load(Ordering::SeqCst) > 0);
}

#[test]
fn inspect_names_live_holders_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lock");
    assert!(inspect(&path).unwrap().is_none());
    let held = try_lock(&path, Mode::Shared, "trainer landscape").unwrap();
    let seen = inspect(&path).unwrap().unwrap();
    assert!(!seen.held_by_writer() && seen.to_string().contains("trainer landscape"));
    drop(held);
    foreign(&path, on_node2(), Some(30.0), Duration::from_secs(60));
    assert!(
        inspect(&path).unwrap().is_none(),
        "an expired lease is free"
    );
}
