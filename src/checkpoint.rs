//! Checkpoints: after every epoch, `<run>/checkpoints/epoch-NNNN/` holds the model
//! (`model.safetensors`: weights and BatchNorm statistics, loadable from Python), the optimizer
//! moments (`optimizer.safetensors`) and `state.json` (epoch, optimizer step, best so far, and a
//! CRC-32 of each tensor file). A checkpoint is built under a temporary name, synced and renamed,
//! so it exists completely or not at all; one whose files do not match their checksums is
//! skipped with a warning in favour of the previous one. The newest `keep_last` and the best
//! are kept.

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

fn epoch_dir(run: &Path, epoch: u32) -> PathBuf {
    run.join(DIR).join(format!("epoch-{epoch:04}"))
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
    let final_dir = epoch_dir(run, state.epoch);
    let tmp = root.join(format!("epoch-{:04}.tmp", state.epoch));
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

/// Completed checkpoints' epochs, newest first.
fn epochs(run: &Path) -> Result<Vec<u32>> {
    let root = run.join(DIR);
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found: Vec<u32> = fs::read_dir(&root)?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("epoch-")?.parse().ok())
        .collect();
    found.sort_unstable_by(|a, b| b.cmp(a));
    Ok(found)
}

pub fn exists(run: &Path) -> Result<bool> {
    Ok(!epochs(run)?.is_empty())
}

fn prune(run: &Path, keep_last: usize, best_epoch: u32) -> Result<()> {
    for (i, epoch) in epochs(run)?.into_iter().enumerate() {
        if i >= keep_last && epoch != best_epoch {
            fs::remove_dir_all(epoch_dir(run, epoch))?;
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
    for epoch in epochs(run)? {
        let dir = epoch_dir(run, epoch);
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
        State { epoch, optimizer_step: epoch as i64 * 10, best_epoch, best_f1: 0.5, crc32: [0, 0] }
    }

    #[test]
    fn keeps_the_last_k_and_the_best_and_skips_damaged_ones() {
        let run = tempfile::tempdir().unwrap();
        for epoch in 1..=5 {
            save(run.path(), &tensors(epoch as f32), &tensors(0.0), state(epoch, 2), 2).unwrap();
        }
        assert_eq!(epochs(run.path()).unwrap(), vec![5, 4, 2]);
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
