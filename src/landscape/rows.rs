//! The rows of a landscape block (`landscape/<name>/blocks/*.parquet`, schema
//! `lossbench_core::schema::landscape_block`), gathered value by value.

use std::sync::Arc;

use anyhow::Result;
use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};

/// One value of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The checkpoint's epoch the value was computed at.
    pub checkpoint: Option<u32>,
    pub point: u32,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    /// The layer or block of a per-layer value.
    pub unit: Option<String>,
    pub quantity: String,
    pub value: f64,
}

impl Row {
    /// A value at a point without coordinates.
    pub fn at(checkpoint: Option<u32>, point: u32, quantity: &str, value: f64) -> Row {
        Row {
            checkpoint,
            point,
            alpha: None,
            beta: None,
            unit: None,
            quantity: quantity.into(),
            value,
        }
    }

    pub fn with_unit(mut self, unit: &str) -> Row {
        self.unit = Some(unit.into());
        self
    }

    pub fn with_alpha(mut self, alpha: f64) -> Row {
        self.alpha = Some(alpha);
        self
    }
}

/// What every row of a landscape's blocks shares.
pub struct Shared<'a> {
    pub name: &'a str,
    pub kind: &'a str,
    /// `interp`'s other end (`<run>@<epoch>`), else empty.
    pub other: &'a str,
    pub seed: u64,
}

fn repeated(value: &str, n: usize) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(value, n)))
}

/// The block of `rows`.
pub fn batch(shared: &Shared, rows: &[Row]) -> Result<RecordBatch> {
    let n = rows.len();
    let columns: Vec<(&str, ArrayRef)> = vec![
        ("name", repeated(shared.name, n)),
        ("kind", repeated(shared.kind, n)),
        (
            "checkpoint",
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.checkpoint))),
        ),
        ("other", repeated(shared.other, n)),
        (
            "direction_seed",
            Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                shared.seed,
                n,
            ))),
        ),
        (
            "point",
            Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.point))),
        ),
        (
            "alpha",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.alpha))),
        ),
        (
            "beta",
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.beta))),
        ),
        (
            "unit",
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.unit.as_deref()),
            )),
        ),
        (
            "quantity",
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.quantity.as_str()),
            )),
        ),
        (
            "value",
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
        ),
    ];
    lossbench_core::schema::batch(&schema(), columns)
}

pub fn schema() -> arrow_schema::SchemaRef {
    lossbench_core::schema::of(lossbench_core::schema::landscape_block())
}

/// The rows of a block file, as written.
pub fn read(path: &std::path::Path) -> Result<Vec<Row>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float64Type, UInt32Type};
    let mut out = Vec::new();
    for b in lossbench_core::tables::read_parquet(path, None)? {
        let column = |name: &str| {
            b.column_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("{}: no column {name}", path.display()))
        };
        let wrong =
            |name: &str| anyhow::anyhow!("{}: column {name} has another type", path.display());
        let u32s = |name: &str| -> Result<&arrow_array::UInt32Array> {
            column(name)?
                .as_primitive_opt::<UInt32Type>()
                .ok_or_else(|| wrong(name))
        };
        let f64s = |name: &str| -> Result<&arrow_array::Float64Array> {
            column(name)?
                .as_primitive_opt::<Float64Type>()
                .ok_or_else(|| wrong(name))
        };
        let texts = |name: &str| -> Result<&arrow_array::StringArray> {
            column(name)?
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong(name))
        };
        let (checkpoint, point) = (u32s("checkpoint")?, u32s("point")?);
        let (alpha, beta, value) = (f64s("alpha")?, f64s("beta")?, f64s("value")?);
        let (unit, quantity) = (texts("unit")?, texts("quantity")?);
        for i in 0..b.num_rows() {
            out.push(Row {
                checkpoint: checkpoint.is_valid(i).then(|| checkpoint.value(i)),
                point: point.value(i),
                alpha: alpha.is_valid(i).then(|| alpha.value(i)),
                beta: beta.is_valid(i).then(|| beta.value(i)),
                unit: unit.is_valid(i).then(|| unit.value(i).to_string()),
                quantity: quantity.value(i).to_string(),
                value: value.value(i),
            });
        }
    }
    Ok(out)
}
