//! lossbench-core: what two or more lossbench binaries share, and nothing else
//! (docs/architecture.md; `scripts/house.py --check` fails on a module one binary alone uses).
//!
//! - the job configuration ([`config`]): its schema with every default, layering, checks,
//!   recipes, losses and architectures, and its digest; the trainer turns it into runtime
//!   objects, the collector and the tuner read it typed;
//! - the BigEarthNet class definitions ([`labels`]) and the store: its layout ([`layout`]),
//!   written by data-prep and read here ([`store`]) by the trainer and the collector;
//! - the run folder ([`run_folder`], its one reader) and its formats: records ([`records`]),
//!   `run.json` ([`run_info`]), test predictions ([`predictions`]), LRP heatmaps
//!   ([`heatmaps`]) and tuning trials ([`trial`]), and the metrics they hold ([`metrics`] of
//!   decisions, [`ranking`] of scores);
//! - the Parquet tables: one schema per table or file ([`schema`]), reading and writing them
//!   ([`tables`]);
//! - the machinery of the binaries: logging ([`logging`]), progress bars ([`progress`]), atomic
//!   writes ([`files`]), the locks of run folders, results folders and stores ([`lock`]),
//!   decoders of untrusted input kept from crashing ([`untrusted`]), the report's and
//!   `trainer explain`'s PNG images ([`images`]).

pub mod config;
pub mod files;
pub mod heatmaps;
pub mod host;
pub mod images;
pub mod labels;
pub mod layout;
pub mod lock;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod predictions;
pub mod progress;
pub mod ranking;
pub mod records;
pub mod run_folder;
pub mod run_info;
pub mod schema;
pub mod splitmix;
pub mod store;
pub mod tables;
pub mod trial;
pub mod untrusted;
