//! The one work loop of every landscape kind: its work comes in blocks, each written atomically
//! as `<landscape>/blocks/<stem>.parquet`; block b is worker b mod count's (MPI ranks x array
//! tasks), a rerun computes only the missing ones, and the folder (with `spec.json`) is made
//! only once a block's inputs were read, so nothing is written for a landscape that cannot be
//! computed. The kinds are its clients: [`super::grid`] and [`super::spectrum`].

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;

use super::{Outcome, Spec, Worker, rows};
use lossbench_core::run_folder::{LANDSCAPE_SPEC_FILE as SPEC_FILE, blocks_dir};

/// A landscape kind's work, as the loop sees it.
pub trait Client {
    /// The blocks' file stems, in an order every worker agrees on.
    fn stems(&self) -> Vec<String>;
    /// Whether missing block `b` is still wanted (a trace whose estimate has its probes is
    /// not).
    fn wanted(&self, _b: usize) -> Result<bool> {
        Ok(true)
    }
    /// Reads what block `b` needs (its checkpoint), before anything is written.
    fn load(&mut self, b: usize) -> Result<()>;
    /// Computes block `b`; the landscape's folder exists.
    fn compute(&mut self, b: usize) -> Result<RecordBatch>;
    /// Block `b` is written (a spectrum drops its saved Lanczos state).
    fn written(&mut self, _b: usize) -> Result<()> {
        Ok(())
    }
}

/// The file of the block `stem` of the landscape in `dir`.
pub fn path(dir: &Path, stem: &str) -> PathBuf {
    blocks_dir(dir).join(format!("{stem}.parquet"))
}

/// Computes this worker's missing blocks of `client` into the landscape folder `dir`.
pub fn run(dir: &Path, spec: &Spec, worker: &Worker, client: &mut dyn Client) -> Result<Outcome> {
    let stems = client.stems();
    let mine: Vec<usize> = (0..stems.len())
        .filter(|b| b % worker.count == worker.index)
        .collect();
    let todo: Vec<usize> = mine
        .iter()
        .copied()
        .filter(|&b| !path(dir, &stems[b]).is_file())
        .collect();
    let mut outcome = Outcome {
        folder: dir.to_path_buf(),
        blocks: stems.len(),
        computed: 0,
        already_done: mine.len() - todo.len(),
    };
    let progress =
        lossbench_core::progress::bar_if(worker.writes_shared, todo.len() as u64, "blocks");
    let mut created = false;
    for b in todo {
        if client.wanted(b)? {
            client.load(b)?;
            if !created {
                create(dir, spec)?;
                created = true;
            }
            let batch = client.compute(b)?;
            let file = path(dir, &stems[b]);
            lossbench_core::tables::write_parquet(&file, &rows::schema(), &[batch])?;
            client.written(b)?;
            outcome.computed += 1;
            tracing::info!(block = b, of = stems.len(), item = %stems[b], "landscape block written");
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(outcome)
}

/// Refuses a folder holding another landscape.
pub fn check_existing(dir: &Path, spec: &Spec) -> Result<()> {
    let path = dir.join(SPEC_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let existing: Spec = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: unreadable", path.display()))?;
    if existing != *spec {
        bail!(
            "{} holds another landscape ({}); choose another --name or remove it",
            dir.display(),
            path.display()
        );
    }
    Ok(())
}

/// Creates the landscape's folder with its spec (whoever comes first; the others check theirs
/// against it) and removes temporary files of workers killed mid-write.
fn create(dir: &Path, spec: &Spec) -> Result<()> {
    let blocks = blocks_dir(dir);
    fs::create_dir_all(&blocks).with_context(|| format!("creating {}", blocks.display()))?;
    for folder in [dir, &blocks] {
        lossbench_core::files::remove_stale_temporaries(folder);
    }
    let bytes = serde_json::to_vec_pretty(spec)?;
    if !lossbench_core::files::create_new_atomically(&dir.join(SPEC_FILE), &bytes)? {
        check_existing(dir, spec)?;
    }
    Ok(())
}
