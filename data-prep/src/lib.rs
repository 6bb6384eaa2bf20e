//! data-prep: reads a BigEarthNet archive (v1.0 or v2.0 on-disk format) and writes a lossless,
//! sharded Zarr v3 store; also writes synthetic archives in the same formats.
//!
//! The store layout ([`layout`]) and reader ([`store::Store`]) are shared with the trainer.

pub mod archive;
pub mod convert;
pub mod geotiff;
pub mod labels;
pub mod layout;
pub mod logging;
pub mod packed;
pub mod plan;
pub mod progress;
pub mod stats;
pub mod store;
pub mod summary;
pub mod synth;
pub mod untrusted;
