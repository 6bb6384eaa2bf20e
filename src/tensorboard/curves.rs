//! A training run's TensorBoard curves (rank 0, `tensorboard.every` > 0): every N optimizer
//! steps the training loss, learning rate, images per second and data-wait share; per epoch
//! every validation metric of the record and the per-class AP; the LRP snapshot's heatmaps as
//! images; the resolved config as text at each attempt's start.
//!
//! The x axis of every curve is the global optimizer step (an epoch's values at its last
//! step), so a resumed attempt continues it: it first drops from the earlier files what was
//! logged after the checkpoint it resumes (and tells TensorBoard so with a restart event), then
//! logs the same steps again. What TensorBoard shows equals an undisturbed run's curves.
//! Writing is not allowed to stop training: a failure (a full disk) is logged once, and the
//! curves stop.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::writer::{EventWriter, drop_after};
use lossbench_core::heatmaps::HeatmapRow;
use lossbench_core::labels::BEN19;
use lossbench_core::records::EpochRecord;

/// The tag of a class: its index and name, lowercase, words joined by `_`.
pub fn class_tag(index: usize) -> String {
    let name: String = BEN19[index]
        .to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .take(4)
        .collect::<Vec<_>>()
        .join("_");
    format!("{index:02}_{name}")
}

/// What the steps since the last point took.
struct Window {
    started: Instant,
    images: usize,
    waited: Duration,
}

pub struct Curves {
    writer: Option<EventWriter>,
    every: u64,
    window: Window,
}

impl Curves {
    /// The curves of the run in `run` from optimizer step `start` on (0 for a fresh run);
    /// `None` with `every` = 0. `config` is the resolved config's text.
    pub fn open(run: &Path, every: u64, start: i64, config: &str) -> Result<Option<Curves>> {
        if every == 0 {
            return Ok(None);
        }
        let dir = run.join(super::DIR);
        let dropped = drop_after(&dir, start)?;
        if dropped > 0 {
            tracing::info!(
                dropped,
                after_step = start,
                "TensorBoard events of a killed attempt dropped"
            );
        }
        let mut writer = EventWriter::create(&dir, &format!("step{start}"))?;
        if start > 0 {
            writer.restart_at(start + 1)?;
        }
        writer.text(start, "config", &format!("```toml\n{config}\n```"))?;
        writer.flush()?;
        Ok(Some(Curves {
            writer: Some(writer),
            every,
            window: Window {
                started: Instant::now(),
                images: 0,
                waited: Duration::ZERO,
            },
        }))
    }

    /// Runs `f` on the writer; a failure stops the curves with one warning.
    fn write(&mut self, f: impl FnOnce(&mut EventWriter) -> Result<()>) {
        if let Some(w) = &mut self.writer
            && let Err(e) = f(w)
        {
            tracing::warn!("TensorBoard curves stop here: {e:#}");
            self.writer = None;
        }
    }

    /// After optimizer step `step` (global), which trained `images` patches with `lr`, at a
    /// mean loss of `loss`; `waited` is the time this epoch's loader has made steps wait so
    /// far. Every `every` steps a point of each training curve.
    pub fn step(&mut self, step: i64, loss: f64, lr: f64, images: usize, waited: Duration) {
        self.window.images += images;
        if !(step as u64).is_multiple_of(self.every) {
            return;
        }
        let seconds = self.window.started.elapsed().as_secs_f64().max(1e-9);
        let wait = waited.saturating_sub(self.window.waited).as_secs_f64();
        let values = [
            ("train/loss".to_string(), loss),
            ("train/lr".to_string(), lr),
            (
                "train/images_per_s".to_string(),
                self.window.images as f64 / seconds,
            ),
            (
                "train/data_wait_share".to_string(),
                (wait / seconds).min(1.0),
            ),
        ];
        self.write(|w| w.scalars(step, &values));
        self.window = Window {
            started: Instant::now(),
            images: 0,
            waited,
        };
    }

    /// A new epoch's loader starts its waits from zero.
    pub fn epoch_started(&mut self) {
        self.window.waited = Duration::ZERO;
    }

    /// The epoch's record at its last step `step`.
    pub fn epoch(&mut self, step: i64, r: &EpochRecord) {
        let v = &r.val;
        let mut values = vec![
            ("epoch".to_string(), f64::from(r.epoch)),
            ("train/epoch_loss".to_string(), r.train_loss),
            ("val/loss".to_string(), r.val_loss),
            ("val/f1_samples".to_string(), v.samples.f1),
            ("val/f1_micro".to_string(), v.micro.f1),
            ("val/f1_macro".to_string(), v.macro_avg.f1),
            ("val/precision_samples".to_string(), v.samples.precision),
            ("val/recall_samples".to_string(), v.samples.recall),
            ("val/hamming_loss".to_string(), v.hamming_loss),
            ("val/subset_accuracy".to_string(), v.subset_accuracy),
            ("time/epoch_s".to_string(), r.wall_s),
        ];
        if let Some(k) = &r.val_ranking {
            let optional = [
                ("val/map_macro", k.map_macro),
                ("val/map_micro", k.map_micro),
                ("val/auc_macro", k.auc_macro),
            ];
            values.extend(
                optional
                    .iter()
                    .filter_map(|(t, v)| v.map(|v| (t.to_string(), v))),
            );
            values.extend([
                ("val/one_error".to_string(), k.one_error),
                ("val/coverage".to_string(), k.coverage),
                ("val/ranking_loss".to_string(), k.ranking_loss),
                ("val/lrap".to_string(), k.lrap),
            ]);
            for (c, class) in k.per_class.iter().enumerate() {
                if let Some(ap) = class.ap {
                    values.push((format!("val_ap/{}", class_tag(c)), ap));
                }
            }
        }
        for (c, m) in v.per_class.iter().enumerate() {
            values.push((format!("val_f1/{}", class_tag(c)), m.f1));
        }
        self.write(|w| w.scalars(step, &values));
    }

    /// The LRP snapshot's maps at step `step`, each on its own ±peak scale with a colour bar
    /// (the report's colours: red positive, blue negative).
    pub fn heatmaps(&mut self, step: i64, rows: &[HeatmapRow]) {
        self.write(|w| {
            for r in rows {
                let png = lossbench_core::images::heatmap_with_bar_png(&r.map, 120, 1)?;
                let size = image_size(&png)?;
                let tag = format!("lrp/{}/{}", r.patch, class_tag(usize::from(r.class_index)));
                w.image(step, &tag, png, size)?;
            }
            Ok(())
        });
    }

    /// At a checkpoint: everything logged so far is handed to the file system.
    pub fn checkpoint(&mut self) {
        self.write(EventWriter::flush);
    }
}

/// Width and height of a PNG (its IHDR chunk).
pub fn image_size(png: &[u8]) -> Result<(u32, u32)> {
    anyhow::ensure!(png.len() >= 24 && &png[12..16] == b"IHDR", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    Ok((be(16), be(20)))
}
