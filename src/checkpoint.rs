//! Checkpoints: after every epoch, `<run>/checkpoints/epoch-NNNN/` holds the model
//! (`model.safetensors`: weights and BatchNorm statistics, loadable from Python), the optimizer
//! moments (`optimizer.safetensors`) and `state.json` (epoch, optimizer step, best so far, and a
//! CRC-32 of each tensor file). A checkpoint is built under a temporary name, synced and renamed,
//! so it exists completely or not at all; one whose files do not match their checksums is
//! skipped with a warning in favour of the previous one. The newest `keep_last` and the best
//! are kept. A run stopped by a signal mid-epoch saves `epoch-NNNN-step-SSSSSS/`: NNNN epochs
//! done and SSSSSS steps of the next.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub const DIR: &str = "checkpoints";
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const STATE: &str = "state.json";

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
    /// Best epoch so far by validation F1 (sample average), and that F1.
    pub best_epoch: u32,
    pub best_f1: f64,
    /// CRC-32 of `model.safetensors` and `optimizer.safetensors`.
    pub crc32: [u32; 2],
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
    if step == 0 { format!("epoch-{epoch:04}") } else { format!("epoch-{epoch:04}-step-{step:06}") }
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

fn crc_of(path: &Path) -> Result<u32> {
    Ok(crc32fast::hash(&fs::read(path).with_context(|| format!("reading {}", path.display()))?))
}

fn sync_dir(path: &Path) -> Result<()> {
    fs::File::open(path)?.sync_all().with_context(|| format!("syncing {}", path.display()))
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let pairs: Vec<(&str, Tensor)> = sorted.iter().map(|(n, t)| (n.as_str(), t.to_device(tch::Device::Cpu))).collect();
    Tensor::write_safetensors(&pairs, path).with_context(|| format!("writing {}", path.display()))?;
    fs::File::open(path)?.sync_all()?;
    Ok(())
}

/// Writes the checkpoint of `state.epoch` atomically, then prunes old ones.
pub fn save(run: &Path, model: &[(String, Tensor)], optimizer: &[(String, Tensor)], mut state: State, keep_last: usize) -> Result<()> {
    let root = run.join(DIR);
    fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let at = (state.epoch, state.steps_into_next);
    let final_dir = position_dir(run, at);
    let tmp = root.join(format!("{}.tmp", dir_name(at)));
    if tmp.exists() {
        fs::remove_dir_all(&tmp)?;
    }
    fs::create_dir(&tmp)?;
    write_tensors(&tmp.join(MODEL), model)?;
    write_tensors(&tmp.join(OPTIMIZER), optimizer)?;
    state.crc32 = [crc_of(&tmp.join(MODEL))?, crc_of(&tmp.join(OPTIMIZER))?];
    let state_path = tmp.join(STATE);
    fs::write(&state_path, serde_json::to_vec_pretty(&state)?)?;
    fs::File::open(&state_path)?.sync_all()?;
    sync_dir(&tmp)?;
    if final_dir.exists() {
        fs::remove_dir_all(&final_dir)?;
    }
    fs::rename(&tmp, &final_dir).with_context(|| format!("renaming {} to {}", tmp.display(), final_dir.display()))?;
    sync_dir(&root)?;
    prune(run, keep_last, state.best_epoch)
}

/// Completed checkpoints' positions, newest first.
fn positions(run: &Path) -> Result<Vec<Position>> {
    let root = run.join(DIR);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<Position> =
        fs::read_dir(&root)?.filter_map(|e| parse_dir_name(e.ok()?.file_name().to_str()?)).collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

pub fn exists(run: &Path) -> Result<bool> {
    Ok(!positions(run)?.is_empty())
}

fn prune(run: &Path, keep_last: usize, best_epoch: u32) -> Result<()> {
    for (i, at) in positions(run)?.into_iter().enumerate() {
        if i >= keep_last && at != (best_epoch, 0) {
            fs::remove_dir_all(position_dir(run, at))?;
        }
    }
    Ok(())
}

fn load_dir(dir: &Path) -> Result<Loaded> {
    let state: State = serde_json::from_slice(&fs::read(dir.join(STATE))?).context("unreadable state.json")?;
    for (file, crc) in [MODEL, OPTIMIZER].iter().zip(state.crc32) {
        let got = crc_of(&dir.join(file))?;
        if got != crc {
            bail!("{file}: checksum {got:08x}, expected {crc:08x}");
        }
    }
    let model = Tensor::read_safetensors(dir.join(MODEL))?;
    let optimizer = Tensor::read_safetensors(dir.join(OPTIMIZER))?;
    Ok(Loaded { dir: dir.to_path_buf(), state, model, optimizer })
}

/// The newest checkpoint that verifies; torn or corrupt ones are reported and skipped.
pub fn latest(run: &Path) -> Result<Option<Loaded>> {
    for at in positions(run)? {
        let dir = position_dir(run, at);
        match load_dir(&dir) {
            Ok(loaded) => return Ok(Some(loaded)),
            Err(e) => tracing::warn!(checkpoint = %dir.display(), "skipping a damaged checkpoint: {e:#}"),
        }
    }
    Ok(None)
}

/// The checkpoint of a given epoch (e.g. the best one), verified.
pub fn at_epoch(run: &Path, epoch: u32) -> Result<Loaded> {
    load_dir(&epoch_dir(run, epoch)).with_context(|| format!("loading the checkpoint of epoch {epoch}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn tensors(v: f32) -> Vec<(String, Tensor)> {
        vec![("a".into(), Tensor::full([3], v as f64, (Kind::Float, tch::Device::Cpu))), ("b".into(), Tensor::ones([2, 2], (Kind::Float, tch::Device::Cpu)))]
    }

    fn state(epoch: u32, best_epoch: u32) -> State {
        State { epoch, steps_into_next: 0, partial_loss_sum: 0.0, optimizer_step: epoch as i64 * 10, best_epoch, best_f1: 0.5, crc32: [0, 0] }
    }

    #[test]
    fn keeps_the_last_k_and_the_best_and_skips_damaged_ones() {
        let run = tempfile::tempdir().unwrap();
        for epoch in 1..=5 {
            save(run.path(), &tensors(epoch as f32), &tensors(0.0), state(epoch, 2), 2).unwrap();
        }
        assert_eq!(positions(run.path()).unwrap(), vec![(5, 0), (4, 0), (2, 0)]);
        // A mid-epoch checkpoint sorts after its epoch's start (kept here with a larger keep_last).
        save(run.path(), &tensors(9.0), &tensors(0.0), State { steps_into_next: 3, ..state(5, 2) }, 5).unwrap();
        assert_eq!(positions(run.path()).unwrap(), vec![(5, 3), (5, 0), (4, 0), (2, 0)]);
        assert_eq!(latest(run.path()).unwrap().unwrap().state.steps_into_next, 3);
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
}
