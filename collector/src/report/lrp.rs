//! The LRP grid (the study's Tables 6.12 / 6.13): one patch and class explained across epochs
//! (rows) by every setup (columns, its smallest seed), maps top-aligned in fixed-size cells,
//! each row on one colour scale with its colour bar, and under each map the logit and the
//! classes predicted at that epoch marked right or wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;

use super::Options;
use super::page::{Page, escape, png_img};
use super::setups::Setups;
use crate::columns::Columns;
use lossbench_core::layout::{BAND_GROUPS, FULL_SIDE, Split};
use lossbench_core::schema::{MAP_VALUES, Table};
use lossbench_core::tables::{read_parquet, table_files};

/// Pixels of a map in the grid.
const CELL: u32 = 120;

/// A key and the index of the file holding its row.
type Located = (Key, usize);

/// One LRP snapshot row without its map: where to find it.
struct Key {
    setup: String,
    seed: u64,
    epoch: u32,
    patch: String,
    class: String,
    is_true: bool,
    is_predicted: bool,
}

fn keys(b: &RecordBatch, setups: &Setups) -> Result<Vec<Option<Key>>> {
    let c = Columns::new("lrp", b);
    (0..c.rows())
        .map(|i| {
            let Some(setup) = setups.of_run(&c.str("run_id", i)?) else {
                return Ok(None);
            };
            Ok(Some(Key {
                setup: setup.to_string(),
                seed: c.u64("seed", i)?,
                epoch: c.u32("epoch", i)?,
                patch: c.str("patch", i)?,
                class: c.str("class", i)?,
                is_true: c.bool("is_true", i)?,
                is_predicted: c.bool("is_predicted", i)?,
            }))
        })
        .collect()
}

/// The true-colour image of a patch, read from a store the runs trained on (the `runs`
/// table's `data`), as a PNG.
fn patch_image(stores: &[String], patch: &str) -> Result<Vec<u8>> {
    let group = &BAND_GROUPS[0];
    let channel = |band: &str| {
        group
            .bands
            .iter()
            .position(|b| *b == band)
            .with_context(|| format!("{band} is not a 10 m band"))
    };
    let (r, g, b) = (channel("B04")?, channel("B03")?, channel("B02")?);
    let mut tried = Vec::new();
    for path in stores.iter().filter(|s| !s.is_empty()) {
        let store = match lossbench_core::store::Store::open(Path::new(path)) {
            Ok(s) => s,
            Err(e) => {
                tried.push(format!("{e:#}"));
                continue;
            }
        };
        for split in Split::ALL {
            let data = store.split(split)?;
            if let Some(i) = data.names.iter().position(|n| n == patch) {
                let values = data.read_group(0, i)?;
                let n = group.pixels_per_band();
                let band = |k: usize| &values[k * n..(k + 1) * n];
                return lossbench_core::images::true_colour_png(
                    band(r),
                    band(g),
                    band(b),
                    group.side as u32,
                    1,
                );
            }
        }
        tried.push(format!("{path} has no patch {patch}"));
    }
    if tried.is_empty() {
        bail!("the runs name no store");
    }
    bail!("{}", tried.join("; "))
}

/// The grid's patch and class: as asked, or the probe patch and true class with snapshots for
/// the most setups (then epochs; first by name on ties).
fn choose(
    keys: &[(Key, usize)],
    chosen: &dyn Fn(&Key) -> bool,
    opts: &Options,
) -> Result<(String, String)> {
    let mut coverage: BTreeMap<(&str, &str), (BTreeSet<&str>, usize)> = BTreeMap::new();
    for (k, _) in keys.iter().filter(|(k, _)| chosen(k)) {
        if opts.lrp_patch.as_ref().is_some_and(|p| *p != k.patch)
            || opts.lrp_class.as_ref().is_some_and(|c| *c != k.class)
            || (opts.lrp_class.is_none() && !k.is_true)
        {
            continue;
        }
        let e = coverage.entry((&k.patch, &k.class)).or_default();
        e.0.insert(&k.setup);
        e.1 += 1;
    }
    let best = coverage.iter().max_by(|a, b| {
        (a.1.0.len(), a.1.1)
            .cmp(&(b.1.0.len(), b.1.1))
            .then(b.0.cmp(a.0))
    });
    if let Some(((p, c), _)) = best {
        return Ok((p.to_string(), c.to_string()));
    }
    let probes: BTreeSet<&str> = keys.iter().map(|(k, _)| k.patch.as_str()).collect();
    let classes: BTreeSet<&str> = keys
        .iter()
        .filter(|(k, _)| opts.lrp_patch.as_ref().is_none_or(|p| *p == k.patch))
        .map(|(k, _)| k.class.as_str())
        .collect();
    bail!(
        "no LRP snapshot of --lrp-patch {} / --lrp-class {}: the snapshots' probe patches are {}; their classes {}",
        opts.lrp_patch.as_deref().unwrap_or("(any)"),
        opts.lrp_class.as_deref().unwrap_or("(a true class)"),
        probes.into_iter().collect::<Vec<_>>().join(", "),
        classes.into_iter().collect::<Vec<_>>().join(", ")
    )
}

/// Up to `n` epochs spread over `epochs` (first and last included).
fn spread(epochs: &[u32], n: usize) -> Vec<u32> {
    if epochs.len() <= n {
        return epochs.to_vec();
    }
    let n = n.max(2);
    let mut picked: Vec<u32> = (0..n)
        .map(|i| epochs[i * (epochs.len() - 1) / (n - 1)])
        .collect();
    picked.dedup();
    picked
}

/// What the grid shows, and the maps it needs.
struct Grid {
    /// The setups with snapshots, each with the seed shown (its smallest).
    columns: Vec<(String, u64)>,
    patch: String,
    class: String,
    epochs: Vec<u32>,
    truth: BTreeSet<String>,
    /// (setup, epoch) → the classes predicted.
    predicted: BTreeMap<(String, u32), BTreeSet<String>>,
    /// (setup, epoch) → the map and the class's logit.
    maps: BTreeMap<(String, u32), (Vec<f32>, f32)>,
}

impl Grid {
    /// The seed of a setup shown, as the key's.
    fn shows(&self, k: &Key) -> bool {
        self.columns
            .iter()
            .any(|(s, seed)| *s == k.setup && *seed == k.seed)
            && k.patch == self.patch
    }

    /// Plans the grid from every snapshot's key.
    fn plan(all: &[Located], setups: &Setups, opts: &Options) -> Result<Grid> {
        let columns: Vec<(String, u64)> = setups
            .order
            .iter()
            .filter_map(|s| {
                let seeds = all
                    .iter()
                    .filter(|(k, _)| &k.setup == s)
                    .map(|(k, _)| k.seed);
                seeds.min().map(|seed| (s.clone(), seed))
            })
            .collect();
        let chosen = |k: &Key| {
            columns
                .iter()
                .any(|(s, seed)| *s == k.setup && *seed == k.seed)
        };
        let (patch, class) = choose(all, &chosen, opts)?;
        let mut grid = Grid {
            columns,
            patch,
            class,
            epochs: Vec::new(),
            truth: BTreeSet::new(),
            predicted: BTreeMap::new(),
            maps: BTreeMap::new(),
        };
        let epochs: BTreeSet<u32> = all
            .iter()
            .filter(|(k, _)| grid.shows(k) && k.class == grid.class)
            .map(|(k, _)| k.epoch)
            .collect();
        grid.epochs = spread(&epochs.into_iter().collect::<Vec<_>>(), opts.lrp_epochs);
        for (k, _) in all {
            if k.patch == grid.patch && k.is_true {
                grid.truth.insert(k.class.clone());
            }
            if grid.shows(k) && k.is_predicted {
                let cell = grid
                    .predicted
                    .entry((k.setup.clone(), k.epoch))
                    .or_default();
                cell.insert(k.class.clone());
            }
        }
        Ok(grid)
    }

    fn wants(&self, k: &Key) -> bool {
        self.shows(k) && k.class == self.class && self.epochs.contains(&k.epoch)
    }

    /// Reads the maps of the shown cells from the files that hold them only.
    fn read_maps(&mut self, files: &[PathBuf], all: &[Located], setups: &Setups) -> Result<()> {
        let needed: BTreeSet<usize> = all
            .iter()
            .filter(|(k, _)| self.wants(k))
            .map(|(_, f)| *f)
            .collect();
        for &f in &needed {
            for b in read_parquet(&files[f], None)? {
                let c = Columns::new("lrp", &b);
                for (i, k) in keys(&b, setups)?.into_iter().enumerate() {
                    if let Some(k) = k.filter(|k| self.wants(k)) {
                        let map = (c.f32_list("map", i, MAP_VALUES)?, c.f32("logit", i)?);
                        self.maps.insert((k.setup, k.epoch), map);
                    }
                }
            }
        }
        Ok(())
    }

    fn html(&self) -> Result<String> {
        let mut html = String::from("<div class=wrap><table class=lrp><thead><tr><th>epoch</th>");
        for (s, seed) in &self.columns {
            let _ = write!(
                html,
                "<th>{}<br><span class=n>seed {seed}</span></th>",
                escape(s)
            );
        }
        html.push_str("<th>scale</th></tr></thead><tbody>");
        for &e in &self.epochs {
            html.push_str(&self.row(e)?);
        }
        html.push_str("</tbody></table></div>");
        Ok(html)
    }

    /// One epoch's maps on one scale, the row's largest |relevance|, and its colour bar.
    fn row(&self, e: u32) -> Result<String> {
        let cells: Vec<Option<&(Vec<f32>, f32)>> = self
            .columns
            .iter()
            .map(|(s, _)| self.maps.get(&(s.clone(), e)))
            .collect();
        let peak = cells
            .iter()
            .flatten()
            .map(|(m, _)| lossbench_core::images::peak(m))
            .fold(0f32, f32::max);
        let mut html = format!("<tr><td>{e}</td>");
        for ((s, _), cell) in self.columns.iter().zip(&cells) {
            match cell {
                Some((map, logit)) => {
                    let png = lossbench_core::images::heatmap_png(map, FULL_SIDE as u32, 1, peak)?;
                    let labels =
                        prediction_labels(self.predicted.get(&(s.clone(), e)), &self.truth);
                    let _ = write!(
                        html,
                        "<td>{}<div class=labels>logit {logit:.2}<br>{labels}</div></td>",
                        png_img(&png, CELL, CELL, &format!("{s}, epoch {e}"))
                    );
                }
                None => html.push_str("<td class=missing>no snapshot</td>"),
            }
        }
        let bar = lossbench_core::images::colour_bar_png(14, CELL)?;
        let _ = write!(
            html,
            "<td><table class=bar><tr><td rowspan=3>{}</td><td style=\"height:16px\">{peak:+.2e}</td></tr>\
             <tr><td class=mid style=\"height:{}px\">0</td></tr>\
             <tr><td style=\"height:16px;vertical-align:bottom\">{:+.2e}</td></tr></table></td></tr>",
            png_img(&bar, 14, CELL, "colour scale"),
            CELL - 40,
            -peak
        );
        Ok(html)
    }
}

/// Every snapshot's key (the maps are most of the bytes: read later, for the shown cells),
/// with the index of its file in the returned list.
fn read_keys(results: &Path, setups: &Setups) -> Result<(Vec<PathBuf>, Vec<Located>)> {
    let without_maps = [
        "run_id",
        "seed",
        "epoch",
        "patch",
        "class",
        "is_true",
        "is_predicted",
    ];
    let files = table_files(&results.join(Table::Lrp.name()))?;
    let mut all = Vec::new();
    for (f, path) in files.iter().enumerate() {
        for b in read_parquet(path, Some(&without_maps))? {
            all.extend(keys(&b, setups)?.into_iter().flatten().map(|k| (k, f)));
        }
    }
    Ok((files, all))
}

pub fn section(
    page: &mut Page,
    results: &Path,
    setups: &Setups,
    opts: &Options,
    stores: &[String],
) -> Result<()> {
    page.heading(3, "LRP heatmaps across epochs (Tables 6.12 / 6.13)");
    let (files, all) = read_keys(results, setups)?;
    if all.is_empty() {
        page.note("No LRP snapshots (lrp.every = 0, or no epoch finished yet).");
        return Ok(());
    }
    let mut grid = Grid::plan(&all, setups, opts)?;
    grid.read_maps(&files, &all, setups)?;
    header(page, stores, &grid.patch, &grid.class, &grid.truth);
    page.raw(&grid.html()?);
    page.note(
        "Red: evidence for the explained class, blue: against; each row on one scale, ±its largest |relevance| \
         (the bar at its end). Under each map: the model's logit for the class and the classes it predicts at that \
         epoch, ✓ where the patch carries them, ✗ where it does not, and its true classes it missed.",
    );
    Ok(())
}

/// The patch in true colour, its true labels, and the explained class.
fn header(page: &mut Page, stores: &[String], patch: &str, class: &str, truth: &BTreeSet<String>) {
    let image = match patch_image(stores, patch) {
        Ok(png) => png_img(&png, CELL, CELL, &format!("{patch}, true colour")),
        Err(e) => format!(
            "<span class=missing>true-colour image unavailable: {}</span>",
            escape(&format!("{e:#}"))
        ),
    };
    let truth: Vec<String> = truth.iter().map(|c| escape(c)).collect();
    page.raw(&format!(
        "<table class=lrp><tr><td>{image}</td><td class=labels><b>{}</b> (B04, B03, B02, 2–98% stretched)<br>\
         true classes: {}<br>explained class: <b>{}</b></td></tr></table>",
        escape(patch),
        truth.join("; "),
        escape(class)
    ));
}

/// A class's name up to its first comma: the grid's cells are narrow.
fn short(class: &str) -> String {
    escape(class.split(',').next().unwrap_or(class))
}

/// The predicted classes marked right (✓) or wrong (✗), then the true ones missed.
fn prediction_labels(predicted: Option<&BTreeSet<String>>, truth: &BTreeSet<String>) -> String {
    let predicted: BTreeSet<String> = predicted.cloned().unwrap_or_default();
    let mut parts: Vec<String> = predicted
        .iter()
        .map(|c| {
            if truth.contains(c) {
                format!("<span class=right>✓ {}</span>", short(c))
            } else {
                format!("<span class=wrong>✗ {}</span>", short(c))
            }
        })
        .collect();
    let missed: Vec<String> = truth
        .iter()
        .filter(|c| !predicted.contains(*c))
        .map(|c| short(c))
        .collect();
    if parts.is_empty() {
        parts.push("predicts nothing".into());
    }
    if !missed.is_empty() {
        parts.push(format!(
            "<span class=wrong>missed: {}</span>",
            missed.join("; ")
        ));
    }
    parts.join("<br>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_spread_over_the_run_and_labels_mark_right_and_wrong() {
        assert_eq!(spread(&[1, 2, 3], 6), [1, 2, 3]);
        assert_eq!(spread(&(1..=80).collect::<Vec<_>>(), 4), [1, 27, 53, 80]);
        let truth: BTreeSet<String> = ["Urban fabric", "Arable land"].map(String::from).into();
        let predicted: BTreeSet<String> = ["Urban fabric", "Beaches, dunes, sands"]
            .map(String::from)
            .into();
        let html = prediction_labels(Some(&predicted), &truth);
        assert!(
            html.contains("<span class=right>✓ Urban fabric</span>"),
            "{html}"
        );
        assert!(
            html.contains("<span class=wrong>✗ Beaches</span>"),
            "{html}"
        );
        assert!(html.contains("missed: Arable land"), "{html}");
        assert!(prediction_labels(None, &truth).starts_with("predicts nothing"));
    }
}
