//! lossbench: runs the BigEarthNet-19 loss-function study as repeatable batch jobs. This
//! library is what the `trainer` and `collector` binaries are thin over; the store it trains
//! from is written by the `data-prep` crate, whose layout and reader it re-exports so that both
//! sides use one definition.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod losses;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod results;
pub mod train;

pub use data_prep::{labels, layout, store};
