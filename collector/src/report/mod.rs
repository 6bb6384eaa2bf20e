//! `collector report`: one self-contained HTML page (inline SVG charts, PNG heatmaps as data
//! URIs) from the merged tables: the study's comparisons for every loss, mean ± std over seeds
//! (docs/results.md, "Report").

mod charts;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use base64::Engine;

use crate::labels::BEN19;
use crate::results::{read_parquet, read_table, table_files};

/// The study's loss abbreviations and column order (study.md, Table 6.1).
const STUDY_ORDER: [(&str, &str); 7] =
    [("ce", "CE"), ("focal", "FL"), ("hamming", "HAL"), ("huber", "HL"), ("sparsemax", "SML"), ("ranking", "RL"), ("wce", "W-CE")];

pub struct Options {
    /// "First epoch at which each loss reaches this validation F1 (sample average)".
    pub f1_threshold: f64,
    /// The LRP grid's patch and class (default: a probe patch and one of its true classes that
    /// every loss has snapshots of).
    pub lrp_patch: Option<String>,
    pub lrp_class: Option<String>,
    /// Rows (epochs) of the LRP grid at most.
    pub lrp_epochs: usize,
}

fn label(loss: &str) -> String {
    STUDY_ORDER.iter().find(|(n, _)| *n == loss).map_or_else(|| loss.to_string(), |(_, l)| format!("{l} ({loss})"))
}

/// Losses in the study's order, others after them alphabetically.
fn ordered(losses: BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = STUDY_ORDER.iter().map(|(n, _)| n.to_string()).filter(|n| losses.contains(n)).collect();
    out.extend(losses.into_iter().filter(|l| !STUDY_ORDER.iter().any(|(n, _)| n == l)));
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Typed column access by name.
struct Columns<'a>(&'a RecordBatch);

impl<'a> Columns<'a> {
    fn get(&self, name: &str) -> Result<&'a dyn Array> {
        self.0.column_by_name(name).map(|c| c.as_ref()).with_context(|| format!("a results table lacks column {name}"))
    }
    fn str(&self, name: &str, i: usize) -> Result<String> {
        Ok(self.get(name)?.as_string::<i32>().value(i).to_string())
    }
    fn f64(&self, name: &str, i: usize) -> Result<Option<f64>> {
        let a = self.get(name)?.as_primitive::<Float64Type>();
        Ok(a.is_valid(i).then(|| a.value(i)))
    }
    fn u32(&self, name: &str, i: usize) -> Result<u32> {
        Ok(self.get(name)?.as_primitive::<UInt32Type>().value(i))
    }
    fn u64(&self, name: &str, i: usize) -> Result<u64> {
        Ok(self.get(name)?.as_primitive::<UInt64Type>().value(i))
    }
}

const TABLE_6_1: [(&str, &str); 12] = [
    ("P micro", "micro_precision"),
    ("P macro", "macro_precision"),
    ("P sample", "samples_precision"),
    ("R micro", "micro_recall"),
    ("R macro", "macro_recall"),
    ("R sample", "samples_recall"),
    ("F1 micro", "micro_f1"),
    ("F1 macro", "macro_f1"),
    ("F1 sample", "samples_f1"),
    ("F1 weighted", "weighted_f1"),
    ("Hamming loss", "hamming_loss"),
    ("subset accuracy", "subset_accuracy"),
];

/// Per loss: metric column → one value per seed.
type PerLoss = BTreeMap<String, BTreeMap<&'static str, Vec<f64>>>;

fn test_metrics(results: &Path) -> Result<PerLoss> {
    let mut out = PerLoss::new();
    for b in read_table(&results.join("test_metrics"), None)? {
        let c = Columns(&b);
        for i in 0..b.num_rows() {
            let per = out.entry(c.str("loss", i)?).or_default();
            for (_, col) in TABLE_6_1 {
                per.entry(col).or_default().extend(c.f64(col, i)?);
            }
        }
    }
    Ok(out)
}

fn section_table_6_1(html: &mut String, per_loss: &PerLoss) {
    let losses = ordered(per_loss.keys().cloned().collect());
    html.push_str("<h2>Test metrics per loss (Table 6.1 layout): mean ± std over seeds</h2>");
    if losses.is_empty() {
        html.push_str("<p>No finished runs yet.</p>");
        return;
    }
    html.push_str("<table><tr><th>metric</th>");
    for l in &losses {
        let n = per_loss[l]["micro_f1"].len();
        let _ = write!(html, "<th>{} <span class=n>n={n}</span></th>", escape(&label(l)));
    }
    html.push_str("</tr>");
    for (name, col) in TABLE_6_1 {
        let _ = write!(html, "<tr><td>{name}</td>");
        let best = losses.iter().map(|l| mean_std(&per_loss[l][col]).0).fold(
            if col == "hamming_loss" { f64::INFINITY } else { f64::NEG_INFINITY },
            |a, b| {
                if col == "hamming_loss" { a.min(b) } else { a.max(b) }
            },
        );
        for l in &losses {
            let (m, s) = mean_std(&per_loss[l][col]);
            let class = if m == best { " class=best" } else { "" };
            let _ = write!(html, "<td{class}>{m:.3} <span class=sd>± {s:.3}</span></td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</table><p class=note>Best value per row in bold (lowest for the Hamming loss). Study reference: docs of the study, Table 6.1.</p>");
}

fn section_classes(html: &mut String, results: &Path) -> Result<()> {
    // (loss, class index) → F1 per seed, and the test support per class.
    let mut f1: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    let mut support = [0u64; BEN19.len()];
    for b in read_table(&results.join("class_metrics"), None)? {
        let c = Columns(&b);
        let classes = c.get("class_index")?.as_primitive::<arrow_array::types::UInt8Type>();
        for i in 0..b.num_rows() {
            if c.str("split", i)? != "test" {
                continue;
            }
            let k = classes.value(i) as usize;
            f1.entry((c.str("loss", i)?, k)).or_default().extend(c.f64("f1", i)?);
            support[k] = c.u64("support", i)?;
        }
    }
    let losses = ordered(f1.keys().map(|(l, _)| l.clone()).collect());
    html.push_str("<h2>Per-class test F1 (Table 6.4 / Fig. 6.1): mean over seeds</h2>");
    if losses.is_empty() {
        html.push_str("<p>No finished runs yet.</p>");
        return Ok(());
    }
    let values: Vec<Vec<f64>> =
        losses.iter().map(|l| (0..BEN19.len()).map(|k| f1.get(&(l.clone(), k)).map_or(0.0, |v| mean_std(v).0)).collect()).collect();
    let names: Vec<String> = losses.iter().map(|l| label(l)).collect();
    html.push_str(&charts::bar_chart(&BEN19, &names.iter().map(String::as_str).collect::<Vec<_>>(), &values, "test F1"));
    html.push_str("<table><tr><th>class</th><th>test support</th>");
    for n in &names {
        let _ = write!(html, "<th>{}</th>", escape(n));
    }
    html.push_str("</tr>");
    for (k, class) in BEN19.iter().enumerate() {
        let _ = write!(html, "<tr><td>{}</td><td>{}</td>", escape(class), support[k]);
        for v in &values {
            let _ = write!(html, "<td>{:.3}</td>", v[k]);
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    Ok(())
}

fn section_curves(html: &mut String, results: &Path, threshold: f64) -> Result<()> {
    let mut curves: BTreeMap<String, BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for b in read_table(&results.join("epochs"), None)? {
        let c = Columns(&b);
        for i in 0..b.num_rows() {
            if c.str("split", i)? == "validation"
                && let Some(f1) = c.f64("samples_f1", i)?
            {
                curves.entry(c.str("loss", i)?).or_default().entry(c.u32("epoch", i)?).or_default().push(f1);
            }
        }
    }
    let losses = ordered(curves.keys().cloned().collect());
    html.push_str("<h2>Validation F1 (sample average) per epoch (Fig. 6.2): mean over seeds</h2>");
    let series: Vec<charts::Series> = losses
        .iter()
        .map(|l| charts::Series { name: label(l), points: curves[l].iter().map(|(&e, v)| (e as f64, mean_std(v).0)).collect() })
        .collect();
    html.push_str(&charts::line_chart(&series, "epoch", "validation F1 (sample)", Some(threshold)));
    let _ = write!(html, "<table><tr><th>loss</th><th>first epoch with validation F1 ≥ {threshold}</th><th>best validation F1</th></tr>");
    for (l, s) in losses.iter().zip(&series) {
        let first = s.points.iter().find(|p| p.1 >= threshold).map_or("not reached".to_string(), |p| format!("{}", p.0));
        let best = s.points.iter().map(|p| p.1).fold(0.0, f64::max);
        let _ = write!(html, "<tr><td>{}</td><td>{first}</td><td>{best:.3}</td></tr>", escape(&label(l)));
    }
    html.push_str("</table>");
    Ok(())
}

/// One LRP snapshot row without its map: where to find it.
struct LrpKey {
    loss: String,
    seed: u64,
    epoch: u32,
    patch: String,
    class: String,
    is_true: bool,
}

fn section_lrp(html: &mut String, results: &Path, opts: &Options) -> Result<()> {
    html.push_str("<h2>LRP heatmaps across epochs (Tables 6.12 / 6.13)</h2>");
    let dir = results.join("lrp");
    let keys_of = |b: &RecordBatch| -> Result<Vec<LrpKey>> {
        let c = Columns(b);
        let truth = c.get("is_true")?.as_boolean();
        (0..b.num_rows())
            .map(|i| {
                Ok(LrpKey {
                    loss: c.str("loss", i)?,
                    seed: c.u64("seed", i)?,
                    epoch: c.u32("epoch", i)?,
                    patch: c.str("patch", i)?,
                    class: c.str("class", i)?,
                    is_true: truth.value(i),
                })
            })
            .collect()
    };
    let without_maps = ["run_id", "loss", "seed", "epoch", "patch", "class", "is_true"];
    // First the keys alone (the maps are most of the bytes), remembering each key's file.
    let files = table_files(&dir)?;
    let mut keys = Vec::new();
    let mut file_of = Vec::new();
    for (f, path) in files.iter().enumerate() {
        for b in read_parquet(path, Some(&without_maps))? {
            let found = keys_of(&b)?;
            file_of.extend(std::iter::repeat_n(f, found.len()));
            keys.extend(found);
        }
    }
    if keys.is_empty() {
        html.push_str("<p>No LRP snapshots (lrp.every = 0, or no epoch finished yet).</p>");
        return Ok(());
    }
    let losses = ordered(keys.iter().map(|k| k.loss.clone()).collect());
    // One seed per loss: the smallest.
    let seed_of: BTreeMap<&str, u64> =
        losses.iter().map(|l| (l.as_str(), keys.iter().filter(|k| &k.loss == l).map(|k| k.seed).min().unwrap_or(0))).collect();
    let chosen = |k: &LrpKey| seed_of.get(k.loss.as_str()) == Some(&k.seed);
    let (patch, class) = match (&opts.lrp_patch, &opts.lrp_class) {
        (Some(p), Some(c)) => (p.clone(), c.clone()),
        _ => {
            // The (patch, true class) with snapshots for the most losses, then epochs; first by name on ties.
            let mut coverage: BTreeMap<(String, String), (BTreeSet<String>, usize)> = BTreeMap::new();
            for k in keys.iter().filter(|k| k.is_true && chosen(k)) {
                if opts.lrp_patch.as_ref().is_some_and(|p| *p != k.patch) || opts.lrp_class.as_ref().is_some_and(|c| *c != k.class) {
                    continue;
                }
                let e = coverage.entry((k.patch.clone(), k.class.clone())).or_default();
                e.0.insert(k.loss.clone());
                e.1 += 1;
            }
            let best = coverage.iter().max_by(|a, b| (a.1.0.len(), a.1.1).cmp(&(b.1.0.len(), b.1.1)).then(b.0.cmp(a.0)));
            match best {
                Some(((p, c), _)) => (p.clone(), c.clone()),
                None => bail!("no LRP snapshot matches --lrp-patch / --lrp-class"),
            }
        }
    };
    let epochs: BTreeSet<u32> = keys.iter().filter(|k| chosen(k) && k.patch == patch && k.class == class).map(|k| k.epoch).collect();
    let epochs: Vec<u32> = epochs.into_iter().collect();
    let shown: Vec<u32> = if epochs.len() <= opts.lrp_epochs {
        epochs.clone()
    } else {
        let n = opts.lrp_epochs.max(2);
        let mut picked: Vec<u32> = (0..n).map(|i| epochs[i * (epochs.len() - 1) / (n - 1)]).collect();
        picked.dedup();
        picked
    };
    // The maps of the chosen cells, read from the files that hold them only.
    let wanted = |k: &LrpKey| chosen(k) && k.patch == patch && k.class == class && shown.contains(&k.epoch);
    let needed: BTreeSet<usize> = keys.iter().zip(&file_of).filter(|(k, _)| wanted(k)).map(|(_, &f)| f).collect();
    let mut maps: BTreeMap<(String, u32), (Vec<f32>, f32)> = BTreeMap::new();
    for &f in &needed {
        for b in read_parquet(&files[f], None)? {
            let c = Columns(&b);
            let list = c.get("map")?.as_fixed_size_list();
            let logits = c.get("logit")?.as_primitive::<Float32Type>();
            for (i, k) in keys_of(&b)?.into_iter().enumerate() {
                if wanted(&k) {
                    let values = list.value(i);
                    let map = values.as_primitive::<Float32Type>().values().to_vec();
                    maps.insert((k.loss, k.epoch), (map, logits.value(i)));
                }
            }
        }
    }
    let _ = write!(
        html,
        "<p>Patch <b>{}</b>, class <b>{}</b> (red: evidence for the class, blue: against; each map scaled to its own largest |relevance|; seed per loss: the smallest).</p><table class=lrp><tr><th>epoch</th>",
        escape(&patch),
        escape(&class)
    );
    for l in &losses {
        let _ = write!(html, "<th>{}<br><span class=n>seed {}</span></th>", escape(&label(l)), seed_of[l.as_str()]);
    }
    html.push_str("</tr>");
    for e in &shown {
        let _ = write!(html, "<tr><td>{e}</td>");
        for l in &losses {
            match maps.get(&(l.clone(), *e)) {
                Some((map, logit)) => {
                    let png = crate::render::heatmap_png(map, 120, 1)?;
                    let data = base64::engine::general_purpose::STANDARD.encode(png);
                    let _ = write!(
                        html,
                        "<td><img src=\"data:image/png;base64,{data}\" width=120 height=120 alt=\"{}, epoch {e}\"><br><span class=n>logit {logit:.2}</span></td>",
                        escape(l)
                    );
                }
                None => html.push_str("<td class=missing>no snapshot</td>"),
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    Ok(())
}

fn section_runs(html: &mut String, results: &Path) -> Result<()> {
    let mut rows = Vec::new();
    for b in read_table(&results.join("runs"), None)? {
        let c = Columns(&b);
        for i in 0..b.num_rows() {
            rows.push(format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td></tr>",
                escape(&c.str("run_id", i)?),
                escape(&c.str("status", i)?),
                escape(&c.str("config_hash", i)?),
                c.u32("epochs_done", i)?,
                c.u64("epochs_planned", i)?,
                escape(&c.str("code_revision", i)?),
                c.f64("wall_s", i)?.map_or("".into(), |s| format!("{:.0} s", s)),
            ));
        }
    }
    let _ = write!(
        html,
        "<h2>Runs ({})</h2><table><tr><th>run</th><th>status</th><th>config hash</th><th>epochs</th><th>code</th><th>wall time</th></tr>{}</table>",
        rows.len(),
        rows.join("")
    );
    Ok(())
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}table{border-collapse:collapse;margin:8px 0 20px}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}th{background:#f3f3f3}td:first-child{text-align:left}\
.best{font-weight:bold}.sd,.n{color:#777;font-size:11px}.note{color:#555;font-size:12px}.lrp td{text-align:center}.missing{color:#999}";

/// Writes `out/index.html` from the tables under `results`; returns its path.
pub fn render(results: &Path, out: &Path, opts: &Options) -> Result<PathBuf> {
    if !results.join("runs").is_dir() {
        bail!("{} holds no merged tables: run `collector merge` first", results.display());
    }
    let mut html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>lossbench report</title><style>{STYLE}</style></head><body><h1>Loss-function study on BigEarthNet-19</h1><p class=note>From {} ({}).</p>",
        escape(&results.display().to_string()),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    section_table_6_1(&mut html, &test_metrics(results)?);
    section_classes(&mut html, results)?;
    section_curves(&mut html, results, opts.f1_threshold)?;
    section_lrp(&mut html, results, opts)?;
    section_runs(&mut html, results)?;
    html.push_str("</body></html>\n");
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("index.html");
    crate::results::write_atomically(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_follow_the_study_and_spread_is_the_sample_std() {
        let losses: BTreeSet<String> = ["wce", "mine", "ce", "sparsemax"].iter().map(|s| s.to_string()).collect();
        assert_eq!(ordered(losses), ["ce", "sparsemax", "wce", "mine"]);
        assert_eq!(label("focal"), "FL (focal)");
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!((m, s), (2.0, 1.0));
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
    }
}
