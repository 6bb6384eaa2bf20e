//! collector: what the trainer writes into a run folder and how it becomes tables. The record
//! formats (`epochs.jsonl`, `test_metrics.json`, `run.json`, the Parquet files) are defined here
//! once, for the trainer that writes them and the `collector` binary that merges them into
//! Parquet tables and renders the report. No libtorch: merging and reporting run on login nodes
//! and laptops.

pub mod merge;
pub mod metrics;
pub mod records;
pub mod render;
pub mod report;
pub mod results;
pub mod run_info;

pub use data_prep::labels;
