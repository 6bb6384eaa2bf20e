//! Typed access to the columns of a merged table: a column that is missing or of another type
//! than expected is an error naming the table, the column and the type found, never a panic.

use anyhow::{Context, Result, bail};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, UInt8Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_schema::DataType;

/// One record batch of table `table`.
pub struct Columns<'a> {
    pub table: &'a str,
    pub batch: &'a RecordBatch,
}

impl<'a> Columns<'a> {
    pub fn new(table: &'a str, batch: &'a RecordBatch) -> Self {
        Columns { table, batch }
    }

    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    fn get(&self, name: &str) -> Result<&'a dyn Array> {
        self.batch
            .column_by_name(name)
            .map(|c| c.as_ref())
            .with_context(|| format!("table {}: no column {name}", self.table))
    }

    fn wrong(&self, name: &str, found: &DataType, want: &str) -> anyhow::Error {
        anyhow::anyhow!(
            "table {}: column {name} is {found}, expected {want}",
            self.table
        )
    }

    fn primitive<T: ArrowPrimitiveType>(
        &self,
        name: &str,
        want: &str,
    ) -> Result<&'a PrimitiveArray<T>> {
        let a = self.get(name)?;
        a.as_primitive_opt::<T>()
            .ok_or_else(|| self.wrong(name, a.data_type(), want))
    }

    /// A string (UTF-8 or large UTF-8); null reads as empty.
    pub fn str(&self, name: &str, i: usize) -> Result<String> {
        let a = self.get(name)?;
        if a.is_null(i) {
            return Ok(String::new());
        }
        if let Some(s) = a.as_string_opt::<i32>() {
            return Ok(s.value(i).to_string());
        }
        if let Some(s) = a.as_string_opt::<i64>() {
            return Ok(s.value(i).to_string());
        }
        Err(self.wrong(name, a.data_type(), "a string"))
    }

    /// A string of a column that older tables lack: `None` when the column is absent.
    pub fn opt_str(&self, name: &str, i: usize) -> Result<Option<String>> {
        if self.batch.column_by_name(name).is_none() {
            return Ok(None);
        }
        self.str(name, i).map(Some)
    }

    pub fn f64(&self, name: &str, i: usize) -> Result<Option<f64>> {
        let a = self.primitive::<Float64Type>(name, "float64")?;
        Ok(a.is_valid(i).then(|| a.value(i)))
    }

    pub fn f32(&self, name: &str, i: usize) -> Result<f32> {
        Ok(self.primitive::<Float32Type>(name, "float32")?.value(i))
    }

    pub fn u8(&self, name: &str, i: usize) -> Result<u8> {
        Ok(self.primitive::<UInt8Type>(name, "uint8")?.value(i))
    }

    pub fn u32(&self, name: &str, i: usize) -> Result<u32> {
        Ok(self.primitive::<UInt32Type>(name, "uint32")?.value(i))
    }

    /// A uint32 that may be null.
    pub fn opt_u32(&self, name: &str, i: usize) -> Result<Option<u32>> {
        let a = self.primitive::<UInt32Type>(name, "uint32")?;
        Ok(a.is_valid(i).then(|| a.value(i)))
    }

    pub fn u64(&self, name: &str, i: usize) -> Result<u64> {
        Ok(self.primitive::<UInt64Type>(name, "uint64")?.value(i))
    }

    pub fn bool(&self, name: &str, i: usize) -> Result<bool> {
        let a = self.get(name)?;
        Ok(a.as_boolean_opt()
            .ok_or_else(|| self.wrong(name, a.data_type(), "bool"))?
            .value(i))
    }

    /// A fixed-size list of float32 of `len` values.
    pub fn f32_list(&self, name: &str, i: usize, len: usize) -> Result<Vec<f32>> {
        self.list::<Float32Type>(name, i, len, "float32")
    }

    /// A fixed-size list of uint8 of `len` values.
    pub fn u8_list(&self, name: &str, i: usize, len: usize) -> Result<Vec<u8>> {
        self.list::<UInt8Type>(name, i, len, "uint8")
    }

    fn list<T: ArrowPrimitiveType>(
        &self,
        name: &str,
        i: usize,
        len: usize,
        want: &str,
    ) -> Result<Vec<T::Native>> {
        let a = self.get(name)?;
        let list = a.as_fixed_size_list_opt().ok_or_else(|| {
            self.wrong(name, a.data_type(), &format!("a fixed-size list of {want}"))
        })?;
        let values = list.value(i);
        let typed = values
            .as_primitive_opt::<T>()
            .ok_or_else(|| self.wrong(name, a.data_type(), &format!("a list of {want}")))?;
        if typed.len() != len {
            bail!(
                "table {}: column {name} row {i} holds {} values, expected {len}",
                self.table,
                typed.len()
            );
        }
        Ok(typed.values().to_vec())
    }

    /// The architecture of row `i` (tables merged before architectures were recorded: the
    /// K-Branch CNN).
    pub fn arch(&self, i: usize) -> Result<String> {
        Ok(self.opt_str("arch", i)?.unwrap_or_else(|| "kbranch".into()))
    }

    /// The job of row `i` (older tables: its loss).
    pub fn job(&self, i: usize) -> Result<String> {
        match self.opt_str("job", i)? {
            Some(j) if !j.is_empty() => Ok(j),
            _ => self.str("loss", i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn wrong_types_are_errors_naming_table_column_and_type() {
        let b = RecordBatch::try_from_iter([
            ("loss", Arc::new(Int64Array::from(vec![3])) as ArrayRef),
            ("epoch", Arc::new(StringArray::from(vec!["1"])) as ArrayRef),
        ])
        .unwrap();
        let c = Columns::new("epochs", &b);
        assert_eq!(
            c.str("loss", 0).unwrap_err().to_string(),
            "table epochs: column loss is Int64, expected a string"
        );
        assert_eq!(
            c.u32("epoch", 0).unwrap_err().to_string(),
            "table epochs: column epoch is Utf8, expected uint32"
        );
        assert_eq!(
            c.f64("nope", 0).unwrap_err().to_string(),
            "table epochs: no column nope"
        );
        assert_eq!(c.arch(0).unwrap(), "kbranch");
        assert!(c.job(0).is_err());
    }
}
