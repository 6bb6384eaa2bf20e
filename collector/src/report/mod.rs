//! `collector report`: one self-contained HTML page (inline SVG charts, PNG images as data URIs)
//! from the merged tables: the study's comparisons for every job, mean ± std over seeds, one
//! part per network architecture (docs/results.md, "Report").

mod charts;
mod columns;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use arrow_array::RecordBatch;
use base64::Engine;

use columns::Columns;
use lossbench_core::labels::BEN19;
use lossbench_core::layout::{BAND_GROUPS, FULL_SIDE, Split};
use lossbench_core::schema::MAP_VALUES;
use lossbench_core::tables::{read_parquet, read_table, table_files};

/// The study's loss abbreviations and column order (docs/study.md, Table 6.1); its jobs carry
/// the losses' names.
const STUDY_ORDER: [(&str, &str); 7] = [
    ("ce", "CE"),
    ("focal", "FL"),
    ("hamming", "HAL"),
    ("huber", "HL"),
    ("sparsemax", "SML"),
    ("ranking", "RL"),
    ("wce", "W-CE"),
];

/// Architectures in the order the report shows them, with their titles.
const ARCHS: [(&str, &str); 3] = [
    ("kbranch", "K-Branch CNN"),
    ("resnet50", "ResNet-50"),
    ("vgg16", "VGG-16-BN"),
];

pub struct Options {
    /// "First epoch at which each job reaches this validation F1 (sample average)".
    pub f1_threshold: f64,
    /// The LRP grid's patch and class (default: a probe patch and one of its true classes that
    /// every job has snapshots of).
    pub lrp_patch: Option<String>,
    pub lrp_class: Option<String>,
    /// Rows (epochs) of the LRP grid at most.
    pub lrp_epochs: usize,
}

fn label(job: &str) -> String {
    STUDY_ORDER
        .iter()
        .find(|(n, _)| *n == job)
        .map_or_else(|| job.to_string(), |(_, l)| format!("{l} ({job})"))
}

fn arch_title(arch: &str) -> String {
    ARCHS
        .iter()
        .find(|(n, _)| *n == arch)
        .map_or_else(|| arch.to_string(), |(_, t)| t.to_string())
}

/// Jobs in the study's order, others after them alphabetically.
fn ordered(jobs: BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = STUDY_ORDER
        .iter()
        .map(|(n, _)| n.to_string())
        .filter(|n| jobs.contains(n))
        .collect();
    out.extend(
        jobs.into_iter()
            .filter(|l| !STUDY_ORDER.iter().any(|(n, _)| n == l)),
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// A mean over seeds, with its spread when there is one (a single run has none).
fn mean_cell(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{m:.3} <span class=sd>± {s:.3}</span>")
    } else {
        format!("{m:.3}")
    }
}

fn png_img(png: &[u8], width: u32, alt: &str) -> String {
    let data = base64::engine::general_purpose::STANDARD.encode(png);
    format!(
        "<img src=\"data:image/png;base64,{data}\" width={width} height={width} alt=\"{}\">",
        escape(alt)
    )
}

/// Every batch of a table.
fn table(results: &Path, name: &str) -> Result<Vec<RecordBatch>> {
    read_table(&results.join(name), None)
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

/// Per job: metric column → one value per seed.
type PerJob = BTreeMap<String, BTreeMap<&'static str, Vec<f64>>>;

fn test_metrics(results: &Path, arch: &str) -> Result<PerJob> {
    let mut out = PerJob::new();
    for b in table(results, "test_metrics")? {
        let c = Columns::new("test_metrics", &b);
        for i in 0..c.rows() {
            if c.arch(i)? != arch {
                continue;
            }
            let per = out.entry(c.job(i)?).or_default();
            for (_, col) in TABLE_6_1 {
                per.entry(col).or_default().extend(c.f64(col, i)?);
            }
        }
    }
    Ok(out)
}

fn section_table_6_1(html: &mut String, per_job: &PerJob) {
    let jobs = ordered(per_job.keys().cloned().collect());
    html.push_str("<h3>Test metrics per loss (Table 6.1 layout): mean ± std over seeds</h3>");
    if jobs.is_empty() {
        html.push_str("<p>No finished runs yet.</p>");
        return;
    }
    html.push_str("<table><tr><th>metric</th>");
    for j in &jobs {
        let n = per_job[j]["micro_f1"].len();
        let _ = write!(
            html,
            "<th>{} <span class=n>n={n}</span></th>",
            escape(&label(j))
        );
    }
    html.push_str("</tr>");
    for (name, col) in TABLE_6_1 {
        let _ = write!(html, "<tr><td>{name}</td>");
        let lower_is_better = col == "hamming_loss";
        let means: Vec<f64> = jobs.iter().map(|j| mean_std(&per_job[j][col]).0).collect();
        let best = means.iter().copied().fold(
            if lower_is_better {
                f64::INFINITY
            } else {
                f64::NEG_INFINITY
            },
            |a, b| {
                if lower_is_better { a.min(b) } else { a.max(b) }
            },
        );
        for (j, m) in jobs.iter().zip(&means) {
            let class = if *m == best { " class=best" } else { "" };
            let _ = write!(html, "<td{class}>{}</td>", mean_cell(&per_job[j][col]));
        }
        html.push_str("</tr>");
    }
    html.push_str(
        "</table><p class=note>Best value per row in bold (lowest for the Hamming loss); no spread where one seed ran. \
         The study's figures: docs/study.md, Table 6.1.</p>",
    );
}

fn section_classes(html: &mut String, results: &Path, arch: &str) -> Result<()> {
    // (job, class index) → F1 per seed, and the test support per class.
    let mut f1: BTreeMap<(String, usize), Vec<f64>> = BTreeMap::new();
    let mut support = [0u64; BEN19.len()];
    for b in table(results, "class_metrics")? {
        let c = Columns::new("class_metrics", &b);
        for i in 0..c.rows() {
            if c.str("split", i)? != "test" || c.arch(i)? != arch {
                continue;
            }
            let k = c.u8("class_index", i)? as usize;
            if k >= BEN19.len() {
                bail!(
                    "table class_metrics: class_index {k} is not one of the {} classes",
                    BEN19.len()
                );
            }
            f1.entry((c.job(i)?, k))
                .or_default()
                .extend(c.f64("f1", i)?);
            support[k] = c.u64("support", i)?;
        }
    }
    let jobs = ordered(f1.keys().map(|(l, _)| l.clone()).collect());
    html.push_str("<h3>Per-class test F1 (Table 6.4 / Fig. 6.1): mean over seeds</h3>");
    if jobs.is_empty() {
        html.push_str("<p>No finished runs yet.</p>");
        return Ok(());
    }
    let values: Vec<Vec<f64>> = jobs
        .iter()
        .map(|l| {
            (0..BEN19.len())
                .map(|k| f1.get(&(l.clone(), k)).map_or(0.0, |v| mean_std(v).0))
                .collect()
        })
        .collect();
    let names: Vec<String> = jobs.iter().map(|l| label(l)).collect();
    html.push_str(&charts::bar_chart(
        &BEN19,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        &values,
        "test F1",
    ));
    html.push_str("<table><tr><th>class</th><th>test support</th>");
    for n in &names {
        let _ = write!(html, "<th>{}</th>", escape(n));
    }
    html.push_str("</tr>");
    for (k, class) in BEN19.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td>",
            escape(class),
            support[k]
        );
        for v in &values {
            let _ = write!(html, "<td>{:.3}</td>", v[k]);
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    Ok(())
}

fn section_curves(html: &mut String, results: &Path, arch: &str, threshold: f64) -> Result<()> {
    let mut curves: BTreeMap<String, BTreeMap<u32, Vec<f64>>> = BTreeMap::new();
    for b in table(results, "epochs")? {
        let c = Columns::new("epochs", &b);
        for i in 0..c.rows() {
            if c.str("split", i)? == "validation"
                && c.arch(i)? == arch
                && let Some(f1) = c.f64("samples_f1", i)?
            {
                curves
                    .entry(c.job(i)?)
                    .or_default()
                    .entry(c.u32("epoch", i)?)
                    .or_default()
                    .push(f1);
            }
        }
    }
    let jobs = ordered(curves.keys().cloned().collect());
    html.push_str("<h3>Validation F1 (sample average) per epoch (Fig. 6.2): mean over seeds</h3>");
    let series: Vec<charts::Series> = jobs
        .iter()
        .map(|l| charts::Series {
            name: label(l),
            points: curves[l]
                .iter()
                .map(|(&e, v)| (e as f64, mean_std(v).0))
                .collect(),
        })
        .collect();
    html.push_str(&charts::line_chart(
        &series,
        "epoch",
        "validation F1 (sample)",
        Some(threshold),
    ));
    let _ = write!(
        html,
        "<table><tr><th>loss</th><th>first epoch with validation F1 ≥ {threshold}</th><th>best validation F1</th></tr>"
    );
    for (l, s) in jobs.iter().zip(&series) {
        let first = s
            .points
            .iter()
            .find(|p| p.1 >= threshold)
            .map_or("not reached".to_string(), |p| format!("{}", p.0));
        let best = s.points.iter().map(|p| p.1).fold(0.0, f64::max);
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{first}</td><td>{best:.3}</td></tr>",
            escape(&label(l))
        );
    }
    html.push_str("</table>");
    Ok(())
}

/// One LRP snapshot row without its map: where to find it.
struct LrpKey {
    job: String,
    seed: u64,
    epoch: u32,
    patch: String,
    class: String,
    is_true: bool,
    is_predicted: bool,
}

fn lrp_keys(b: &RecordBatch, arch: &str) -> Result<Vec<Option<LrpKey>>> {
    let c = Columns::new("lrp", b);
    (0..c.rows())
        .map(|i| {
            if c.arch(i)? != arch {
                return Ok(None);
            }
            Ok(Some(LrpKey {
                job: c.job(i)?,
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

/// The true-colour image of a patch, read from the store a run trained on (the `runs` table's
/// `data`), as a PNG.
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
    bail!(
        "no store holds it ({})",
        if tried.is_empty() {
            "the runs name no store".to_string()
        } else {
            tried.join("; ")
        }
    )
}

fn section_lrp(
    html: &mut String,
    results: &Path,
    arch: &str,
    opts: &Options,
    stores: &[String],
) -> Result<()> {
    html.push_str("<h3>LRP heatmaps across epochs (Tables 6.12 / 6.13)</h3>");
    let without_maps = [
        "run_id",
        "job",
        "loss",
        "arch",
        "seed",
        "epoch",
        "patch",
        "class",
        "is_true",
        "is_predicted",
    ];
    // First the keys alone (the maps are most of the bytes), remembering each key's file and row.
    let files = table_files(&results.join("lrp"))?;
    let mut keys: Vec<(LrpKey, usize)> = Vec::new();
    for (f, path) in files.iter().enumerate() {
        for b in read_parquet(path, Some(&without_maps))? {
            keys.extend(lrp_keys(&b, arch)?.into_iter().flatten().map(|k| (k, f)));
        }
    }
    if keys.is_empty() {
        html.push_str("<p>No LRP snapshots (lrp.every = 0, or no epoch finished yet).</p>");
        return Ok(());
    }
    let jobs = ordered(keys.iter().map(|(k, _)| k.job.clone()).collect());
    // One seed per job: the smallest.
    let seed_of: BTreeMap<&str, u64> = jobs
        .iter()
        .map(|l| {
            (
                l.as_str(),
                keys.iter()
                    .filter(|(k, _)| &k.job == l)
                    .map(|(k, _)| k.seed)
                    .min()
                    .unwrap_or(0),
            )
        })
        .collect();
    let chosen = |k: &LrpKey| seed_of.get(k.job.as_str()) == Some(&k.seed);
    let (patch, class) = match (&opts.lrp_patch, &opts.lrp_class) {
        (Some(p), Some(c)) => (p.clone(), c.clone()),
        _ => {
            // The (patch, true class) with snapshots for the most jobs, then epochs; first by name on ties.
            let mut coverage: BTreeMap<(String, String), (BTreeSet<String>, usize)> =
                BTreeMap::new();
            for (k, _) in keys.iter().filter(|(k, _)| k.is_true && chosen(k)) {
                if opts.lrp_patch.as_ref().is_some_and(|p| *p != k.patch)
                    || opts.lrp_class.as_ref().is_some_and(|c| *c != k.class)
                {
                    continue;
                }
                let e = coverage
                    .entry((k.patch.clone(), k.class.clone()))
                    .or_default();
                e.0.insert(k.job.clone());
                e.1 += 1;
            }
            let best = coverage.iter().max_by(|a, b| {
                (a.1.0.len(), a.1.1)
                    .cmp(&(b.1.0.len(), b.1.1))
                    .then(b.0.cmp(a.0))
            });
            match best {
                Some(((p, c), _)) => (p.clone(), c.clone()),
                None => bail!("no LRP snapshot matches --lrp-patch / --lrp-class"),
            }
        }
    };
    let epochs: BTreeSet<u32> = keys
        .iter()
        .filter(|(k, _)| chosen(k) && k.patch == patch && k.class == class)
        .map(|(k, _)| k.epoch)
        .collect();
    let epochs: Vec<u32> = epochs.into_iter().collect();
    let shown: Vec<u32> = if epochs.len() <= opts.lrp_epochs {
        epochs.clone()
    } else {
        let n = opts.lrp_epochs.max(2);
        let mut picked: Vec<u32> = (0..n)
            .map(|i| epochs[i * (epochs.len() - 1) / (n - 1)])
            .collect();
        picked.dedup();
        picked
    };
    // The patch's labels, and each cell's predictions (the rows of that patch at that epoch).
    let short = |name: &str| escape(name.split(',').next().unwrap_or(name));
    let truth: BTreeSet<String> = keys
        .iter()
        .filter(|(k, _)| k.patch == patch && k.is_true)
        .map(|(k, _)| k.class.clone())
        .collect();
    let mut predicted: BTreeMap<(String, u32), BTreeSet<String>> = BTreeMap::new();
    for (k, _) in keys
        .iter()
        .filter(|(k, _)| chosen(k) && k.patch == patch && k.is_predicted)
    {
        predicted
            .entry((k.job.clone(), k.epoch))
            .or_default()
            .insert(k.class.clone());
    }
    // The maps of the chosen cells, read from the files that hold them only.
    let wanted =
        |k: &LrpKey| chosen(k) && k.patch == patch && k.class == class && shown.contains(&k.epoch);
    let needed: BTreeSet<usize> = keys
        .iter()
        .filter(|(k, _)| wanted(k))
        .map(|(_, f)| *f)
        .collect();
    let mut maps: BTreeMap<(String, u32), (Vec<f32>, f32)> = BTreeMap::new();
    for &f in &needed {
        for b in read_parquet(&files[f], None)? {
            let c = Columns::new("lrp", &b);
            for (i, k) in lrp_keys(&b, arch)?.into_iter().enumerate() {
                if let Some(k) = k.filter(|k| wanted(k)) {
                    maps.insert(
                        (k.job, k.epoch),
                        (c.f32_list("map", i, MAP_VALUES)?, c.f32("logit", i)?),
                    );
                }
            }
        }
    }
    let image = match patch_image(stores, &patch) {
        Ok(png) => png_img(&png, 120, &format!("{patch}, true colour")),
        Err(e) => format!(
            "<span class=missing>true-colour image unavailable: {}</span>",
            escape(&format!("{e:#}"))
        ),
    };
    let _ = write!(
        html,
        "<table class=patch><tr><td>{image}</td><td class=labels><b>{}</b><br>true labels: {}<br>explained class: <b>{}</b></td></tr></table>\
         <p>Red: evidence for the class, blue: against; each map scaled to its own largest |relevance|; below each map the \
         model's logit for the class and the classes it predicts at that epoch (its loss's decision rule); seed per loss: \
         the smallest.</p><table class=lrp><tr><th>epoch</th>",
        escape(&patch),
        truth
            .iter()
            .map(|c| short(c))
            .collect::<Vec<_>>()
            .join(", "),
        escape(&class)
    );
    for l in &jobs {
        let _ = write!(
            html,
            "<th>{}<br><span class=n>seed {}</span></th>",
            escape(&label(l)),
            seed_of[l.as_str()]
        );
    }
    html.push_str("</tr>");
    for e in &shown {
        let _ = write!(html, "<tr><td>{e}</td>");
        for l in &jobs {
            match maps.get(&(l.clone(), *e)) {
                Some((map, logit)) => {
                    let png = lossbench_core::images::heatmap_png(map, FULL_SIDE as u32, 1)?;
                    let pred = predicted.get(&(l.clone(), *e)).map_or(String::new(), |p| {
                        p.iter().map(|c| short(c)).collect::<Vec<_>>().join(", ")
                    });
                    let _ = write!(
                        html,
                        "<td>{}<br><span class=n>logit {logit:.2}</span><br><span class=pred>predicted: {}</span></td>",
                        png_img(&png, 120, &format!("{l}, epoch {e}")),
                        if pred.is_empty() {
                            "none".to_string()
                        } else {
                            pred
                        }
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

/// One landscape row, as the report uses it.
struct LandscapeRow {
    job: String,
    seed: u64,
    name: String,
    kind: String,
    checkpoint: Option<u32>,
    alpha: Option<f64>,
    beta: Option<f64>,
    quantity: String,
    value: f64,
}

fn landscape_rows(results: &Path, arch: &str) -> Result<Vec<LandscapeRow>> {
    let mut out = Vec::new();
    for b in table(results, "landscape")? {
        let c = Columns::new("landscape", &b);
        let checkpoint = b.column_by_name("checkpoint").map(|a| a.as_ref());
        for i in 0..c.rows() {
            if c.arch(i)? != arch {
                continue;
            }
            let checkpoint = match checkpoint {
                Some(a) if a.is_valid(i) => Some(c.u32("checkpoint", i)?),
                _ => None,
            };
            out.push(LandscapeRow {
                job: c.job(i)?,
                seed: c.u64("seed", i)?,
                name: c.str("name", i)?,
                kind: c.str("kind", i)?,
                checkpoint,
                alpha: c.f64("alpha", i)?,
                beta: c.f64("beta", i)?,
                quantity: c.str("quantity", i)?,
                value: c.f64("value", i)?.unwrap_or(f64::NAN),
            });
        }
    }
    Ok(out)
}

/// Per job, of one kind: the rows of the first landscape (by name) of its smallest seed.
fn per_job<'a>(rows: &'a [LandscapeRow], kind: &str) -> BTreeMap<String, Vec<&'a LandscapeRow>> {
    let mut first: BTreeMap<String, (u64, &str)> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.kind == kind) {
        let e = first
            .entry(r.job.clone())
            .or_insert((r.seed, r.name.as_str()));
        if (r.seed, r.name.as_str()) < *e {
            *e = (r.seed, r.name.as_str());
        }
    }
    first
        .into_iter()
        .map(|(job, (seed, name))| {
            let chosen = rows
                .iter()
                .filter(|r| r.kind == kind && r.job == job && r.seed == seed && r.name == name)
                .collect();
            (job, chosen)
        })
        .collect()
}

fn curves(
    per_job: &BTreeMap<String, Vec<&LandscapeRow>>,
    quantity: &str,
    x: impl Fn(&LandscapeRow) -> Option<f64>,
) -> Vec<charts::Series> {
    ordered(per_job.keys().cloned().collect())
        .into_iter()
        .map(|job| {
            let mut points: Vec<(f64, f64)> = per_job[&job]
                .iter()
                .filter(|r| r.quantity == quantity)
                .filter_map(|r| x(r).map(|x| (x, r.value)))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            charts::Series {
                name: label(&job),
                points,
            }
        })
        .collect()
}

fn section_landscape(html: &mut String, results: &Path, arch: &str) -> Result<()> {
    let rows = landscape_rows(results, arch)?;
    html.push_str("<h3>Loss landscapes (docs/landscape.md)</h3>");
    if rows.is_empty() {
        html.push_str("<p>No landscapes yet (trainer landscape).</p>");
        return Ok(());
    }
    html.push_str(
        "<p class=note>Each run's own loss on its training subset, and validation F1 (sample) on its validation \
         subset, around the checkpoint along filter-normalised random directions (smallest seed per loss).</p>",
    );
    let one = per_job(&rows, "1d");
    if !one.is_empty() {
        html.push_str("<h4>1D: θ + α·d</h4>");
        html.push_str(&charts::xy_chart(
            &curves(&one, "loss", |r| r.alpha),
            "α",
            "loss",
        ));
        html.push_str(&charts::xy_chart(
            &curves(&one, "f1_samples", |r| r.alpha),
            "α",
            "validation F1 (sample)",
        ));
    }
    let two = per_job(&rows, "2d");
    if !two.is_empty() {
        // One colour scale for every loss: log10 of the loss where every value is positive.
        let all: Vec<f64> = two
            .values()
            .flatten()
            .filter(|r| r.quantity == "loss")
            .map(|r| r.value)
            .collect();
        let log = all.iter().all(|&v| v > 0.0);
        let scaled = |v: f64| if log { v.log10() } else { v };
        let (lo, hi) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(scaled(v)), b.max(scaled(v)))
            });
        let _ = write!(
            html,
            "<h4>2D: θ + α·d₁ + β·d₂, α left to right, β bottom to top</h4><p class=note>One colour scale for all: {} of the loss \
             from {lo:.3} (dark) to {hi:.3} (light), 12 bands.</p><table><tr>",
            if log { "log10" } else { "value" }
        );
        for job in ordered(two.keys().cloned().collect()) {
            let mut cells: Vec<(f64, f64, f64)> = two[&job]
                .iter()
                .filter(|r| r.quantity == "loss")
                .filter_map(|r| Some((r.alpha?, r.beta?, scaled(r.value))))
                .collect();
            cells.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            let n = (cells.len() as f64).sqrt().round() as usize;
            let cell = if n >= 2 && n * n == cells.len() {
                let values: Vec<f64> = cells.iter().map(|c| c.2).collect();
                png_img(
                    &lossbench_core::images::contour_png(&values, n, lo, hi, 12, 180)?,
                    180,
                    &format!("{job}, 2D landscape"),
                )
            } else {
                format!(
                    "<span class=missing>{} of the grid's points so far</span>",
                    cells.len()
                )
            };
            let _ = write!(html, "<td>{}<br>{cell}</td>", escape(&label(&job)));
        }
        html.push_str("</tr></table>");
    }
    let interp = per_job(&rows, "interp");
    if !interp.is_empty() {
        html.push_str("<h4>Interpolation: (1 − t)·θ₀ + t·θ₁ between two checkpoints</h4>");
        html.push_str(&charts::xy_chart(
            &curves(&interp, "loss", |r| r.alpha),
            "t",
            "loss",
        ));
    }
    let sharp = per_job(&rows, "sharpness");
    if !sharp.is_empty() {
        html.push_str("<h4>Sharpness: the dominant Hessian eigenvalue of the training loss per checkpoint</h4>");
        html.push_str(&charts::line_chart(
            &curves(&sharp, "lambda_max", |r| r.checkpoint.map(f64::from)),
            "epoch",
            "λ_max",
            None,
        ));
    }
    Ok(())
}

/// The runs: their folders, stores and architectures.
struct RunsTable {
    rows: Vec<String>,
    archs: BTreeSet<String>,
    stores: Vec<String>,
}

fn runs_table(results: &Path) -> Result<RunsTable> {
    let mut out = RunsTable {
        rows: Vec::new(),
        archs: BTreeSet::new(),
        stores: Vec::new(),
    };
    for b in table(results, "runs")? {
        let c = Columns::new("runs", &b);
        for i in 0..c.rows() {
            let arch = c.arch(i)?;
            out.rows.push(format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}/{}</td><td>{}</td><td>{}</td></tr>",
                escape(&c.str("run_id", i)?),
                escape(&arch_title(&arch)),
                escape(&c.opt_str("loss_params", i)?.unwrap_or_default()),
                escape(&c.str("status", i)?),
                escape(&c.str("config_hash", i)?),
                c.u32("epochs_done", i)?,
                c.u64("epochs_planned", i)?,
                escape(&c.str("code_revision", i)?),
                c.f64("wall_s", i)?.map_or("".into(), |s| format!("{s:.0} s")),
            ));
            out.archs.insert(arch);
            if let Some(data) = c.opt_str("data", i)?
                && !out.stores.contains(&data)
            {
                out.stores.push(data);
            }
        }
    }
    Ok(out)
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1100px}table{border-collapse:collapse;margin:8px 0 20px}\
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right;font-size:13px}th{background:#f3f3f3}td:first-child{text-align:left}\
.best{font-weight:bold}.sd,.n{color:#777;font-size:11px}.note{color:#555;font-size:12px}.lrp td{text-align:center}.missing{color:#999}\
.pred{font-size:11px;color:#333}.patch td{border:none;vertical-align:top;text-align:left}.labels{font-size:13px}";

/// Writes `out/index.html` from the tables under `results`; returns its path.
pub fn render(results: &Path, out: &Path, opts: &Options) -> Result<PathBuf> {
    if !results.join("runs").is_dir() {
        bail!(
            "{} holds no merged tables: run `collector merge` first",
            results.display()
        );
    }
    let runs = runs_table(results)?;
    let mut html = format!(
        "<!doctype html><html><head><meta charset=utf-8><title>lossbench report</title><style>{STYLE}</style></head><body>\
         <h1>Loss-function study on BigEarthNet-19</h1><p class=note>From {} ({}).</p>",
        escape(&results.display().to_string()),
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    let mut archs: Vec<&String> = runs.archs.iter().collect();
    archs.sort_by_key(|a| {
        ARCHS
            .iter()
            .position(|(n, _)| n == a)
            .unwrap_or(ARCHS.len())
    });
    for arch in archs {
        let _ = write!(html, "<h2>{}</h2>", escape(&arch_title(arch)));
        section_table_6_1(&mut html, &test_metrics(results, arch)?);
        section_classes(&mut html, results, arch)?;
        section_curves(&mut html, results, arch, opts.f1_threshold)?;
        section_lrp(&mut html, results, arch, opts, &runs.stores)?;
        section_landscape(&mut html, results, arch)?;
    }
    let _ = write!(
        html,
        "<h2>Runs ({})</h2><table><tr><th>run</th><th>network</th><th>loss</th><th>status</th><th>config hash</th><th>epochs</th>\
         <th>code</th><th>wall time</th></tr>{}</table>",
        runs.rows.len(),
        runs.rows.join("")
    );
    html.push_str("</body></html>\n");
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let path = out.join("index.html");
    lossbench_core::files::write_atomically(&path, html.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_follow_the_study_and_spread_is_the_sample_std() {
        let jobs: BTreeSet<String> = ["wce", "mine", "ce", "sparsemax"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(ordered(jobs), ["ce", "sparsemax", "wce", "mine"]);
        assert_eq!(label("focal"), "FL (focal)");
        let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
        assert_eq!((m, s), (2.0, 1.0));
        assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
        // One seed: no spread shown.
        assert_eq!(mean_cell(&[0.5]), "0.500");
        assert_eq!(
            mean_cell(&[1.0, 3.0]),
            "2.000 <span class=sd>± 1.414</span>"
        );
    }
}
