//! A landscape's values in TensorBoard: the Hessian spectrum's top eigenvalue, trace ± its
//! standard error and negative mass, and the sharpness's λ_max, per checkpoint (at the
//! checkpoint's optimizer step, on the training curves' axis). Written once the landscape is
//! complete, by whichever worker completes it, as one event file replaced whole
//! (`events.out.tfevents.0.landscape.<name>`): workers that finish together write the same.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::rows::{self, Row};
use crate::tensorboard::writer::{PREFIX, encode_scalars};

/// The quantities shown, and their tags' last part.
const SHOWN: [(&str, &str); 5] = [
    ("eigenvalue", "top_eigenvalue"),
    ("trace", "trace"),
    ("trace_se", "trace_se"),
    ("negative_mass", "negative_mass"),
    ("lambda_max", "lambda_max"),
];

/// Writes the event file of landscape `name` of the run `run` from the rows of its folder's
/// blocks; nothing when it has none of the quantities shown (1D/2D surfaces).
pub fn write(run: &Path, name: &str, blocks: &[std::path::PathBuf]) -> Result<()> {
    let mut rows: Vec<Row> = Vec::new();
    for b in blocks {
        rows.extend(rows::read(b)?);
    }
    // checkpoint epoch → (tag, value); the top eigenvalue is point 0 of `eigenvalue`.
    let mut by_epoch: BTreeMap<u32, Vec<(String, f64)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.unit.is_none()) {
        let Some((_, tag)) = SHOWN.iter().find(|(q, _)| *q == r.quantity) else {
            continue;
        };
        if r.quantity == "eigenvalue" && r.point != 0 {
            continue;
        }
        let epoch = r.checkpoint.unwrap_or(0);
        by_epoch
            .entry(epoch)
            .or_default()
            .push((format!("landscape/{name}/{tag}"), r.value));
    }
    if by_epoch.is_empty() {
        return Ok(());
    }
    let mut events = Vec::new();
    for (epoch, values) in by_epoch {
        let Some(step) = crate::checkpoint::optimizer_step(run, epoch) else {
            tracing::warn!(
                epoch,
                "no checkpoint of this epoch left: its landscape values are not plotted"
            );
            continue;
        };
        events.push((step, values));
    }
    let dir = run.join(crate::tensorboard::DIR);
    let path = dir.join(format!("{PREFIX}0.landscape.{name}"));
    std::fs::create_dir_all(&dir)?;
    let bytes = encode_scalars(&events);
    lossbench_core::files::write_atomically(&path, &bytes)
}
