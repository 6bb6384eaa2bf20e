//! Checkpoints: after every epoch, `<run>/checkpoints/epoch-NNNN/` holds the model
//! (`model.safetensors`: weights and BatchNorm statistics, loadable from Python), the optimizer
//! moments (`optimizer.safetensors`) and `state.json` (epoch, optimizer step, best so far, and a
//! CRC-32 of each tensor file). A checkpoint is built under a temporary name, synced and renamed,
//! so it exists completely or not at all; a damaged one (torn, or files that do not match
//! their checksums) is skipped with a warning in favour of the previous one, while a failure to
//! read it (an I/O error, a permission) stops with that error: it says nothing about the
//! checkpoint. The newest `keep_last` and the best are kept. A run stopped by a signal
//! mid-epoch saves `epoch-NNNN-step-SSSSSS/`: NNNN epochs done and SSSSSS steps of the next.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub const DIR: &str = "checkpoints";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

/// A best score read back: JSON has no −∞ (a mid-epoch checkpoint of the first epoch has no
/// best yet) and serde_json writes it as null.
fn score_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(<Option<f64> as serde::Deserialize>::deserialize(d)?.unwrap_or(f64::NEG_INFINITY))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Epochs completed.
    pub epoch: u32,
    /// Steps completed of the next epoch (0 at an epoch's end), and their summed training loss
    /// (sum over patches) so far.
    #[serde(default)]
    pub steps_into_next: u64,
    #[serde(default)]
    pub partial_loss_sum: f64,
    pub optimizer_step: i64,
    /// Best epoch so far by the selection metric, and its value.
    pub best_epoch: u32,
    /// The best epoch's validation metric (the run's `selection.metric`, signed so that higher
    /// is better; checkpoints written before selection metrics hold the F1 sample average).
    /// Before any epoch has been validated it is −∞, which JSON writes as null.
    #[serde(alias = "best_f1", deserialize_with = "score_or_null")]
    pub best_score: f64,
    /// CRC-32 of `model.safetensors` and `optimizer.safetensors`.
    pub crc32: [u32; 2],
    /// Their sizes in bytes: a checkpoint whose files have other sizes is damaged, which is
    /// told without reading them (absent in checkpoints written before sizes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<[u64; 2]>,
    /// The configuration that produced it (absent in checkpoints written before fingerprints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<crate::resume::Fingerprint>,
}

pub struct Loaded {
    pub dir: PathBuf,
    pub state: State,
    pub model: Vec<(String, Tensor)>,
    pub optimizer: Vec<(String, Tensor)>,
}

/// Position in training: (epochs completed, steps into the next epoch).
type Position = (u32, u64);

fn dir_name((epoch, step): Position) -> String {
    if step == 0 {
        format!("epoch-{epoch:04}")
    } else {
        format!("epoch-{epoch:04}-step-{step:06}")
    }
}

fn parse_dir_name(name: &str) -> Option<Position> {
    let rest = name.strip_prefix("epoch-")?;
    match rest.split_once("-step-") {
        Some((e, st)) => Some((e.parse().ok()?, st.parse().ok()?)),
        None => Some((rest.parse().ok()?, 0)),
    }
}

fn position_dir(run: &Path, at: Position) -> PathBuf {
    run.join(DIR).join(dir_name(at))
}

fn epoch_dir(run: &Path, epoch: u32) -> PathBuf {
    position_dir(run, (epoch, 0))
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let pairs: Vec<(&str, Tensor)> = sorted
        .iter()
        .map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu)))
        .collect();
    Tensor::write_safetensors(&pairs, path)
        .with_context(|| format!("writing {}", path.display()))?;
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Suffix of a checkpoint being written.
const TMP: &str = ".tmp";

/// Writes the checkpoint of `state.epoch` atomically, then prunes old ones. A failed write
/// (a full disk) removes what it wrote, so that the space is free again and the previous
/// checkpoints are as they were.
pub fn save(
    run: &Path,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    mut state: State,
    keep_last: usize,
) -> Result<()> {
    let root = run.join(DIR);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    remove_unfinished(&root)?;
    let at = (state.epoch, state.steps_into_next);
    let tmp = root.join(format!("{}{TMP}", dir_name(at)));
    let written = write_dir(&tmp, model, optimizer, &mut state);
    let committed = written.and_then(|()| commit(&root, &tmp, &position_dir(run, at)));
    if let Err(e) = committed {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    prune(run, keep_last, state.best_epoch)
}

/// Removes checkpoints left unfinished by a writer that was killed (only the run folder's lock
/// holder writes here, so none is being written).
fn remove_unfinished(root: &Path) -> Result<()> {
    let entries = fs::read_dir(root).with_context(|| format!("listing {}", root.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(TMP) {
            let path = entry.path();
            match path.is_dir() {
                true => fs::remove_dir_all(&path),
                false => fs::remove_file(&path),
            }
            .with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// Writes the tensors and `state.json` (with their checksums and sizes) into the new folder
/// `tmp`, synced.
fn write_dir(
    tmp: &Path,
    model: &[(String, Tensor)],
    optimizer: &[(String, Tensor)],
    state: &mut State,
) -> Result<()> {
    fs::create_dir(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    write_tensors(&tmp.join(MODEL), model)?;
    write_tensors(&tmp.join(OPTIMIZER), optimizer)?;
    let crc = |file: &str| -> Result<(u32, u64)> {
        let path = tmp.join(file);
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok((crc32fast::hash(&bytes), bytes.len() as u64))
    };
    let ((m_crc, m_len), (o_crc, o_len)) = (crc(MODEL)?, crc(OPTIMIZER)?);
    state.crc32 = [m_crc, o_crc];
    state.bytes = Some([m_len, o_len]);
    lossbench_core::files::write_atomically(&tmp.join(STATE), &serde_json::to_vec_pretty(state)?)?;
    sync_dir(tmp)
}

/// Puts the finished `tmp` at `final_dir`. A checkpoint already there (a position written
/// again) is exchanged with it in one step where the file system can, else moved aside first
/// to `<name>.replaced`, which [`recover`] puts back if a kill came between the two renames:
/// at no moment is there no checkpoint of that position.
fn commit(root: &Path, tmp: &Path, final_dir: &Path) -> Result<()> {
    let what = || format!("renaming {} to {}", tmp.display(), final_dir.display());
    if final_dir.exists() {
        if lossbench_core::files::exchange(tmp, final_dir).with_context(what)? {
            sync_dir(root)?;
            return fs::remove_dir_all(tmp).with_context(|| format!("removing {}", tmp.display()));
        }
        let aside = replaced(final_dir);
        fs::rename(final_dir, &aside).with_context(what)?;
        fs::rename(tmp, final_dir).with_context(what)?;
        sync_dir(root)?;
        return fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()));
    }
    fs::rename(tmp, final_dir).with_context(what)?;
    sync_dir(root)
}

fn replaced(dir: &Path) -> PathBuf {
    lossbench_core::layout::sibling(dir, ".replaced")
}

/// Puts back a checkpoint moved aside by a write of its position that was killed before it
/// renamed the new one in ([`commit`] without an exchange); called by the run folder's lock
/// holder before it looks for a checkpoint to resume.
pub fn recover(run: &Path) -> Result<()> {
    let root = run.join(DIR);
    let Ok(entries) = fs::read_dir(&root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(original) = name.strip_suffix(".replaced") {
            let back = root.join(original);
            if back.exists() {
                fs::remove_dir_all(entry.path())
            } else {
                tracing::warn!(checkpoint = %back.display(), "putting back a checkpoint an interrupted write had moved aside");
                fs::rename(entry.path(), &back)
            }
            .with_context(|| format!("recovering {}", back.display()))?;
        }
    }
    Ok(())
}

/// Completed checkpoints' positions, newest first.
fn positions(run: &Path) -> Result<Vec<Position>> {
    let root = run.join(DIR);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let entries = fs::read_dir(&root).with_context(|| format!("listing {}", root.display()))?;
    let mut found: Vec<Position> = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", root.display()))?;
        if let Some(at) = entry.file_name().to_str().and_then(parse_dir_name) {
            found.push(at);
        }
    }
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

/// The epochs of the epoch checkpoints a run holds (not the mid-epoch ones), oldest first.
pub fn epochs(run: &Path) -> Result<Vec<u32>> {
    let mut e: Vec<u32> = positions(run)?
        .into_iter()
        .filter(|&(_, step)| step == 0)
        .map(|(epoch, _)| epoch)
        .collect();
    e.sort_unstable();
    Ok(e)
}

pub fn exists(run: &Path) -> Result<bool> {
    Ok(!positions(run)?.is_empty())
}

/// Removes the checkpoints beyond the newest `keep_last` whole ones (damaged ones do not count:
/// they are removed, never kept in a good one's place), keeping the best epoch's.
fn prune(run: &Path, keep_last: usize, best_epoch: u32) -> Result<()> {
    let mut newer_whole = 0;
    for at in positions(run)? {
        let dir = position_dir(run, at);
        let whole = is_whole(&dir);
        if whole {
            newer_whole += 1;
            if newer_whole <= keep_last || at == (best_epoch, 0) {
                continue;
            }
        }
        if !whole {
            tracing::warn!(checkpoint = %dir.display(), "removing a damaged checkpoint");
        }
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Whether a checkpoint folder is whole, told without reading its tensors: `state.json` reads,
/// and its tensor files are there with the sizes it records. A failure to look (an I/O error)
/// counts as whole: only what is known to be damaged is removed.
fn is_whole(dir: &Path) -> bool {
    let state: State = match fs::read(dir.join(STATE)) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(_) => return false,
        },
        Err(e) => return e.kind() != ErrorKind::NotFound,
    };
    [MODEL, OPTIMIZER]
        .iter()
        .enumerate()
        .all(|(i, file)| match fs::metadata(dir.join(file)) {
            Ok(m) => state.bytes.is_none_or(|b| b[i] == m.len()),
            Err(e) => e.kind() != ErrorKind::NotFound,
        })
}

/// Why a checkpoint could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Torn or corrupt: an older checkpoint may be used instead.
    #[error("{dir}: damaged checkpoint: {why}")]
    Damaged { dir: PathBuf, why: String },
    /// Reading failed (I/O error, permission): nothing is known about the checkpoint.
    #[error("{dir}: cannot read the checkpoint")]
    Unreadable {
        dir: PathBuf,
        #[source]
        source: anyhow::Error,
    },
}

/// Reads a checkpoint file: a missing one means a torn checkpoint, any other failure is an I/O
/// error.
fn read_file(dir: &Path, file: &str) -> Result<Vec<u8>, LoadError> {
    let path = dir.join(file);
    fs::read(&path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => LoadError::Damaged {
            dir: dir.into(),
            why: format!("{file} is missing"),
        },
        _ => LoadError::Unreadable {
            dir: dir.into(),
            source: anyhow!(e).context(format!("reading {}", path.display())),
        },
    })
}

fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let damaged = |why: String| LoadError::Damaged {
        dir: dir.into(),
        why,
    };
    let state: State = serde_json::from_slice(&read_file(dir, STATE)?)
        .map_err(|e| damaged(format!("{STATE}: {e}")))?;
    let mut tensors = Vec::new();
    for (file, crc) in [MODEL, OPTIMIZER].into_iter().zip(state.crc32) {
        // The bytes are dropped before the tensors are read: a checkpoint is held once.
        let got = crc32fast::hash(&read_file(dir, file)?);
        if got != crc {
            return Err(damaged(format!(
                "{file}: checksum {got:08x}, expected {crc:08x}"
            )));
        }
        // Its bytes verified, the file is whole: failing to read it now (memory, I/O) says
        // nothing against it, and must not make a resume fall back to an older checkpoint.
        let read = Tensor::read_safetensors(dir.join(file)).map_err(|e| LoadError::Unreadable {
            dir: dir.into(),
            source: anyhow!("reading {}: {e}", dir.join(file).display()),
        })?;
        tensors.push(read);
    }
    let optimizer = tensors.pop().unwrap_or_default();
    let model = tensors.pop().unwrap_or_default();
    Ok(Loaded {
        dir: dir.to_path_buf(),
        state,
        model,
        optimizer,
    })
}

/// The newest checkpoint that verifies; damaged ones are reported and skipped, a read failure
/// is an error.
pub fn latest(run: &Path) -> Result<Option<Loaded>> {
    for at in positions(run)? {
        match load_dir(&position_dir(run, at)) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(e @ LoadError::Damaged { .. }) => tracing::warn!("skipping it: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// The best epoch so far of `run`, as its newest checkpoint records it.
pub fn best_epoch(run: &Path) -> Result<u32> {
    Ok(latest(run)?
        .with_context(|| format!("{}: no checkpoint", run.display()))?
        .state
        .best_epoch)
}

/// The store identity the newest checkpoint of `run` was made on, if it records one.
pub fn recorded_store(run: &Path) -> Result<Option<String>> {
    Ok(latest(run)?
        .and_then(|c| c.state.fingerprint)
        .map(|f| f.store))
}

/// The optimizer step a kept checkpoint of `epoch` was written at (its `state.json` alone).
pub fn optimizer_step(run: &Path, epoch: u32) -> Option<i64> {
    let bytes = fs::read(epoch_dir(run, epoch).join(STATE)).ok()?;
    serde_json::from_slice::<State>(&bytes)
        .ok()
        .map(|s| s.optimizer_step)
}

/// The checkpoint of a given epoch (e.g. the best one), verified.
pub fn at_epoch(run: &Path, epoch: u32) -> Result<Loaded> {
    let dir = epoch_dir(run, epoch);
    if !dir.exists() {
        let kept = epochs(run)?;
        let kept = if kept.is_empty() {
            "it has none".to_string()
        } else {
            let list: Vec<String> = kept.iter().map(u32::to_string).collect();
            format!("it keeps epoch(s) {}", list.join(", "))
        };
        bail!(
            "{} has no checkpoint of epoch {epoch}: {kept} (the newest checkpoint.keep_last and \
             the best are kept, older ones pruned)",
            run.display()
        );
    }
    load_dir(&dir).with_context(|| format!("loading the checkpoint of epoch {epoch}"))
}

/// Copies saved tensors into `vars` by name, after checking that every variable has a saved
/// tensor of its shape: a checkpoint of another architecture or configuration is refused,
/// naming the first tensor that differs, before anything is changed.
pub fn copy_into(vars: &[(String, Tensor)], saved: &[(String, Tensor)], what: &Path) -> Result<()> {
    let find = |name: &str| saved.iter().find(|(n, _)| n == name).map(|(_, t)| t);
    for (name, var) in vars {
        let t = find(name).with_context(|| {
            format!("{}: has no tensor {name}: it was written for another model (architecture or configuration)", what.display())
        })?;
        if t.size() != var.size() {
            bail!(
                "{}: tensor {name} has shape {:?}, the model's has {:?}: it was written for another model",
                what.display(),
                t.size(),
                var.size()
            );
        }
    }
    tch::no_grad(|| {
        for (name, var) in vars {
            let t = find(name).expect("checked above");
            let mut var = var.shallow_clone();
            var.copy_(&t.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn tensors(v: f32) -> Vec<(String, Tensor)> {
        vec![
            (
                "a".into(),
                Tensor::full([3], v as f64, (Kind::Float, tch::Device::Cpu)),
            ),
            (
                "b".into(),
                Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu)),
            ),
        ]
    }

    fn state(epoch: u32, best_epoch: u32) -> State {
        State {
            epoch,
            steps_into_next: 0,
            partial_loss_sum: 0.0,
            optimizer_step: epoch as i64 * 10,
            best_epoch,
            best_score: 0.5,
            crc32: [0, 0],
            bytes: None,
            fingerprint: None,
        }
    }

    /// A mid-epoch checkpoint of the first epoch has no best score yet (−∞, null in JSON): it
    /// reads back as −∞.
    #[test]
    fn a_state_without_a_best_score_yet_reads_back() {
        let mut s = state(0, 0);
        s.best_score = f64::NEG_INFINITY;
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("\"best_score\":null"), "{text}");
        let back: State = serde_json::from_str(&text).unwrap();
        assert_eq!(back.best_score, f64::NEG_INFINITY);
        assert_eq!(
            serde_json::from_str::<State>(&serde_json::to_string(&state(1, 1)).unwrap())
                .unwrap()
                .best_score,
            0.5
        );
    }

    #[test]
    fn keeps_the_last_k_and_the_best_and_skips_damaged_ones() {
        let run = tempfile::tempdir().unwrap();
        for epoch in 1..=5 {
            save(
                run.path(),
                &tensors(epoch as f32),
                &tensors(0.0),
                state(epoch, 2),
                2,
            )
            .unwrap();
        }
        assert_eq!(positions(run.path()).unwrap(), vec![(5, 0), (4, 0), (2, 0)]);
        // A mid-epoch checkpoint sorts after its epoch's start (kept here with a larger keep_last).
        save(
            run.path(),
            &tensors(9.0),
            &tensors(0.0),
            State {
                steps_into_next: 3,
                ..state(5, 2)
            },
            5,
        )
        .unwrap();
        assert_eq!(
            positions(run.path()).unwrap(),
            vec![(5, 3), (5, 0), (4, 0), (2, 0)]
        );
        assert_eq!(epochs(run.path()).unwrap(), vec![2, 4, 5]);
        assert_eq!(
            latest(run.path()).unwrap().unwrap().state.steps_into_next,
            3
        );
        fs::remove_dir_all(position_dir(run.path(), (5, 3))).unwrap();
        let newest = latest(run.path()).unwrap().unwrap();
        assert_eq!(newest.state.epoch, 5);
        let a = &newest.model.iter().find(|(n, _)| n == "a").unwrap().1;
        assert_eq!(a.double_value(&[0]), 5.0);
        // Corrupt epoch 5: the previous one is used.
        let f = epoch_dir(run.path(), 5).join(MODEL);
        let mut bytes = fs::read(&f).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0xff;
        fs::write(&f, bytes).unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().state.epoch, 4);
        // A torn one (no state.json) too.
        fs::remove_file(epoch_dir(run.path(), 4).join(STATE)).unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().state.epoch, 2);
        assert_eq!(at_epoch(run.path(), 2).unwrap().state.best_epoch, 2);
    }

    /// A damaged checkpoint (a torn file) takes no `keep_last` slot: pruning removes it and keeps
    /// the good ones; a position written again keeps one checkpoint of it at every moment, and a
    /// checkpoint moved aside by a write killed halfway is put back; a failed write (a folder
    /// where a file goes, as a full disk fails it) leaves nothing behind.
    #[test]
    fn damaged_ones_never_displace_good_ones_and_rewrites_lose_nothing() {
        let run = tempfile::tempdir().unwrap();
        let save_at = |epoch: u32, value: f32| {
            save(
                run.path(),
                &tensors(value),
                &tensors(0.0),
                state(epoch, 1),
                2,
            )
            .unwrap()
        };
        save_at(1, 1.0);
        save_at(2, 2.0);
        // Epoch 2's model is torn (a disk that lost its tail): keep_last 2 then keeps 3 and 1
        // (also the best); 2 is removed as damaged instead of displacing 1.
        let torn = epoch_dir(run.path(), 2).join(MODEL);
        let bytes = fs::read(&torn).unwrap();
        fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
        save_at(3, 3.0);
        assert_eq!(positions(run.path()).unwrap(), vec![(3, 0), (1, 0)]);
        // Writing epoch 3 again: the new one replaces it.
        save_at(3, 4.0);
        let a = |l: &Loaded| {
            l.model
                .iter()
                .find(|(n, _)| n == "a")
                .unwrap()
                .1
                .double_value(&[0])
        };
        assert_eq!(a(&latest(run.path()).unwrap().unwrap()), 4.0);
        // A write killed between moving the old one aside and renaming the new one in.
        let root = run.path().join(DIR);
        fs::rename(
            epoch_dir(run.path(), 3),
            replaced(&epoch_dir(run.path(), 3)),
        )
        .unwrap();
        assert_eq!(latest(run.path()).unwrap().unwrap().state.epoch, 1);
        recover(run.path()).unwrap();
        assert_eq!(a(&latest(run.path()).unwrap().unwrap()), 4.0);
        // What a write killed halfway left (the chaos suite fills the disk for a failed one).
        let left = root.join("epoch-0004.tmp");
        fs::create_dir_all(&left).unwrap();
        fs::write(left.join(MODEL), b"half").unwrap();
        save(run.path(), &tensors(5.0), &tensors(0.0), state(4, 1), 2).unwrap();
        assert_eq!(positions(run.path()).unwrap(), vec![(4, 0), (3, 0), (1, 0)]);
        let names: Vec<String> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.contains(".tmp") && !n.contains(".replaced")),
            "{names:?}"
        );
    }

    /// A checkpoint that cannot be read (here: a folder where a file should be, which reading
    /// fails on with an I/O error) stops the resume instead of silently using an older one.
    #[test]
    fn read_failures_are_errors_not_damage() {
        let run = tempfile::tempdir().unwrap();
        for epoch in 1..=2 {
            save(
                run.path(),
                &tensors(epoch as f32),
                &tensors(0.0),
                state(epoch, 1),
                3,
            )
            .unwrap();
        }
        let model = epoch_dir(run.path(), 2).join(MODEL);
        fs::remove_file(&model).unwrap();
        fs::create_dir(&model).unwrap();
        let e = format!("{:#}", latest(run.path()).err().expect("an error"));
        assert!(
            e.contains("cannot read the checkpoint") && e.contains("model.safetensors"),
            "{e}"
        );
    }

    #[test]
    fn copies_refuse_other_models_naming_the_tensor() {
        let vars = tensors(0.0);
        let saved = tensors(2.0);
        copy_into(&vars, &saved, Path::new("ck")).unwrap();
        assert_eq!(vars[0].1.double_value(&[1]), 2.0);
        let wider = vec![
            (
                "a".to_string(),
                Tensor::zeros([4], (Kind::Float, tch::Device::Cpu)),
            ),
            (saved[1].0.clone(), saved[1].1.shallow_clone()),
        ];
        let e = copy_into(&vars, &wider, Path::new("ck"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tensor a has shape [4], the model's has [3]"),
            "{e}"
        );
        let e = copy_into(&vars, &saved[1..], Path::new("ck"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has no tensor a"), "{e}");
    }
}
