//! Finding the run folders to merge: each `--runs` argument is a run folder (it holds
//! `config.toml`) or a folder of run folders (a sweep's `OUT`). A path that does not exist, a
//! file, or a folder holding no run folder is refused before anything is written, with a hint
//! where the run folders are when they sit one level deeper.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use lossbench_core::run_folder::{self, is_run_folder as is_run};

/// The sub-folders of `dir`, sorted.
fn subfolders(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    found.sort();
    Ok(found)
}

/// The run folders of one `--runs` argument.
fn runs_of(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.exists() {
        bail!("--runs {}: does not exist", root.display());
    }
    if !root.is_dir() {
        bail!(
            "--runs {}: is a file, not a run folder or a folder of run folders",
            root.display()
        );
    }
    if is_run(root) {
        return Ok(vec![root.to_path_buf()]);
    }
    let found: Vec<PathBuf> = subfolders(root)?
        .into_iter()
        .filter(|p| is_run(p))
        .collect();
    if !found.is_empty() {
        return Ok(found);
    }
    // One level too high (the sweep's parent folder, say): name the folders that hold runs.
    let mut deeper = Vec::new();
    for sub in subfolders(root)? {
        if subfolders(&sub)?.iter().any(|p| is_run(p)) {
            deeper.push(sub.display().to_string());
        }
    }
    if deeper.is_empty() {
        bail!(
            "--runs {}: holds no run folder (a folder with config.toml) and is none",
            root.display()
        );
    }
    bail!(
        "--runs {}: holds no run folder itself; these folders inside it do: {} (pass them)",
        root.display(),
        deeper.join(", ")
    )
}

/// Every run folder named by `roots`, in order; two folders of one name are refused (tables
/// key runs by folder name, so they would overwrite each other's rows).
pub fn discover(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut runs = Vec::new();
    for root in roots {
        runs.extend(runs_of(root)?);
    }
    let mut seen: BTreeMap<std::ffi::OsString, &PathBuf> = BTreeMap::new();
    for dir in &runs {
        let name = dir.file_name().unwrap_or_default().to_os_string();
        if let Some(first) = seen.insert(name, dir) {
            bail!(
                "two run folders have the name {:?}: {} and {}; tables key runs by folder name, \
                 so merge them into separate results folders (--out) or rename one",
                dir.file_name().unwrap_or_default(),
                first.display(),
                dir.display()
            );
        }
    }
    Ok(runs)
}

/// `<run>/landscape/<name>/blocks/*.parquet`: each landscape's name and block files, in order.
pub fn landscape_blocks(run: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for (name, folder) in run_folder::landscapes(run)? {
        for block in lossbench_core::tables::table_files(&run_folder::blocks_dir(&folder))? {
            out.push((name.clone(), block));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_arguments_are_refused_naming_the_right_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let study = tmp.path().join("study");
        let run = study.join("runs").join("ce-seed0");
        fs::create_dir_all(&run).unwrap();
        fs::write(run.join("config.toml"), "").unwrap();
        assert_eq!(
            discover(std::slice::from_ref(&run)).unwrap(),
            std::slice::from_ref(&run)
        );
        assert_eq!(
            discover(&[study.join("runs")]).unwrap(),
            std::slice::from_ref(&run)
        );
        let e = discover(std::slice::from_ref(&study))
            .unwrap_err()
            .to_string();
        let runs = study.join("runs").display().to_string();
        assert!(
            e.contains("holds no run folder itself") && e.contains(&runs),
            "{e}"
        );
        let e = discover(&[tmp.path().join("nope")])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("nope: does not exist"), "{e}");
        let e = discover(&[run.join("config.toml")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a file"), "{e}");
        let e = discover(&[run.join("empty")]).unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        fs::create_dir_all(tmp.path().join("empty")).unwrap();
        let e = discover(&[tmp.path().join("empty")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("holds no run folder (a folder with config.toml)"),
            "{e}"
        );
    }
}
