//! collector: run folders (their formats are in `lossbench-core`) merged into Parquet tables,
//! and the HTML report rendered from those tables. No libtorch: merging and reporting run on
//! login nodes and laptops.

pub mod columns;
pub mod compare;
pub mod merge;
pub mod report;
pub mod results;
pub mod stats;
pub mod status;
