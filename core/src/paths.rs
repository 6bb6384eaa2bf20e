//! Where the paths of configs and run folders lead (docs/training.md, "Paths"). A relative path
//! is relative to where it is written: in a config file, that file's folder; on the command
//! line, the working directory. The trainer records `run.data` and `run.out` absolute in a run's
//! `config.toml`, so the run folder works from anywhere.
//!
//! Run folders written before that recorded them as typed, relative to the directory the
//! trainer was started from. That directory is recovered from where the run folder lies: it is
//! `<start>/<run.out>/<run folder>`, so stripping the recorded `run.out` from the folder's
//! parent gives `<start>`. Where it does not (the folder was moved), the run folder itself is
//! the base, and the resolution says so.

use std::path::{Component, Path, PathBuf};

/// `path` made absolute against `base` when relative, `.` and `..` folded away (lexically:
/// symbolic links are left as they are).
pub fn absolute_from(base: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` made absolute against the working directory.
pub fn absolute(path: &Path) -> PathBuf {
    let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    absolute_from(&here, path)
}

/// A path a run folder records, resolved, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub path: PathBuf,
    /// How it was resolved, for messages: "recorded absolute", or the base used and why.
    pub how: String,
}

/// The `[run]` key `key` (`data`, `out`) of the run folder `dir` whose `config.toml` is
/// `config`, resolved as the module docs say; `None` where the config has no such string.
pub fn recorded(dir: &Path, config: &toml::Table, key: &str) -> Option<Resolved> {
    let text = |k: &str| config.get("run")?.get(k)?.as_str().map(PathBuf::from);
    let value = text(key)?;
    if value.is_absolute() {
        return Some(Resolved {
            path: absolute_from(Path::new("/"), &value),
            how: "recorded absolute".into(),
        });
    }
    let dir = absolute(dir);
    let start = text("out").filter(|out| out.is_relative()).and_then(|out| {
        let out = absolute_from(Path::new("/"), &out);
        let out: PathBuf = out.components().skip(1).collect();
        let parent = dir.parent()?;
        parent.ends_with(&out).then(|| {
            let mut start = parent.to_path_buf();
            for _ in out.components() {
                start.pop();
            }
            start
        })
    });
    Some(match start {
        Some(start) => Resolved {
            path: absolute_from(&start, &value),
            how: format!(
                "run.{key} = {} resolved against {}, the directory the run was started from (the \
                 run folder lies at its run.out)",
                value.display(),
                start.display()
            ),
        },
        None => Resolved {
            path: absolute_from(&dir, &value),
            how: format!(
                "run.{key} = {} resolved against the run folder (the directory the run was \
                 started from is not known: the folder does not lie at its run.out)",
                value.display()
            ),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fold_against_their_base() {
        let base = Path::new("/repo/jobs");
        assert_eq!(
            absolute_from(base, Path::new("../work/demo/store.zarr")),
            Path::new("/repo/work/demo/store.zarr")
        );
        assert_eq!(
            absolute_from(base, Path::new("/data/./s.zarr")),
            Path::new("/data/s.zarr")
        );
    }

    /// A run folder of an earlier version: paths as typed, relative to where it was started.
    #[test]
    fn old_run_folders_resolve_against_where_they_were_started() {
        let config: toml::Table =
            toml::from_str("[run]\ndata = \"store.zarr\"\nout = \"work/runs\"").unwrap();
        let r = recorded(
            Path::new("/home/me/study/work/runs/ce-seed0"),
            &config,
            "data",
        )
        .unwrap();
        assert_eq!(r.path, Path::new("/home/me/study/store.zarr"));
        assert!(
            r.how
                .contains("against /home/me/study, the directory the run was started from"),
            "{}",
            r.how
        );
        // Moved elsewhere: the run folder is the base, and the message says so.
        let r = recorded(Path::new("/archive/ce-seed0"), &config, "data").unwrap();
        assert_eq!(r.path, Path::new("/archive/ce-seed0/store.zarr"));
        assert!(r.how.contains("against the run folder"), "{}", r.how);
        let new: toml::Table = toml::from_str("[run]\ndata = \"/data/s.zarr\"").unwrap();
        let r = recorded(Path::new("/x/ce-seed0"), &new, "data").unwrap();
        assert_eq!(
            (r.path.as_path(), r.how.as_str()),
            (Path::new("/data/s.zarr"), "recorded absolute")
        );
        assert_eq!(recorded(Path::new("/x"), &toml::Table::new(), "data"), None);
    }
}
