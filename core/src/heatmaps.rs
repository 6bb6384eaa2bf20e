//! LRP heatmaps as Parquet (docs/lrp.md): a run's snapshots (`lrp/epoch-NNNN.parquet`,
//! schema [`crate::schema::lrp_snapshot`]) and `trainer explain`'s `heatmaps.parquet`
//! ([`crate::schema::explained`]: also every band's map at its native resolution).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, BooleanArray, Float32Array, StringArray, UInt8Array, UInt32Array};

use crate::labels::BEN19;
use crate::layout::{BAND_COUNT, VALUES_PER_PATCH};
use crate::schema::{self, MAP_VALUES};

/// One explained (patch, class).
pub struct HeatmapRow {
    pub epoch: u32,
    pub patch: String,
    pub class_index: u8,
    /// The patch carries the class / the model predicted it.
    pub is_true: bool,
    pub is_predicted: bool,
    pub logit: f32,
    /// Combined 120x120 map, row-major.
    pub map: Vec<f32>,
    /// Relevance per band, in store order (b10m, b20m, b60m).
    pub band_totals: Vec<f32>,
    /// The per-band maps at native resolution, flattened b10m, b20m, b60m (`trainer explain` only).
    pub bands: Option<Vec<f32>>,
}

fn float_lists(
    rows: &[HeatmapRow],
    width: usize,
    values: impl Fn(&HeatmapRow) -> &[f32],
) -> ArrayRef {
    let mut b = FixedSizeListBuilder::with_capacity(
        Float32Builder::with_capacity(rows.len() * width),
        width as i32,
        rows.len(),
    );
    for r in rows {
        b.values().append_slice(values(r));
        b.append(true);
    }
    Arc::new(b.finish())
}

/// Writes `rows`: with every row's per-band maps (`trainer explain`) in the explained schema,
/// without them in the snapshot schema; a mix is refused.
pub fn write(path: &Path, rows: &[HeatmapRow]) -> Result<()> {
    let with_bands = rows.iter().filter(|r| r.bands.is_some()).count();
    let explained = !rows.is_empty() && with_bands == rows.len();
    if with_bands > 0 && !explained {
        bail!(
            "{}: some heatmaps have per-band maps and some do not",
            path.display()
        );
    }
    let ids = |f: fn(&HeatmapRow) -> u8| Arc::new(UInt8Array::from_iter_values(rows.iter().map(f)));
    let flags = |f: fn(&HeatmapRow) -> bool| {
        Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(f(r)))))
    };
    let mut columns: Vec<(&str, ArrayRef)> = vec![
        (
            "epoch",
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.epoch))),
        ),
        (
            "patch",
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.patch))),
        ),
        (
            "class",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| BEN19[r.class_index as usize]),
            )),
        ),
        ("class_index", ids(|r| r.class_index)),
        ("is_true", flags(|r| r.is_true)),
        ("is_predicted", flags(|r| r.is_predicted)),
        (
            "logit",
            Arc::new(Float32Array::from_iter_values(rows.iter().map(|r| r.logit))),
        ),
        ("map", float_lists(rows, MAP_VALUES, |r| &r.map)),
        (
            "band_totals",
            float_lists(rows, BAND_COUNT, |r| &r.band_totals),
        ),
    ];
    let schema = if explained {
        columns.push((
            "bands",
            float_lists(rows, VALUES_PER_PATCH, |r| {
                r.bands.as_deref().unwrap_or_default()
            }),
        ));
        schema::of(schema::explained())
    } else {
        schema::of(schema::lrp_snapshot())
    };
    let batch = schema::batch(&schema, columns)?;
    crate::tables::write_parquet(path, &schema, &[batch])
}
