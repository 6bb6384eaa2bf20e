//! data-prep: reads a BigEarthNet archive (v1.0 or v2.0 on-disk format, packed or unpacked) and
//! writes a lossless, sharded Zarr v3 store; also writes synthetic archives in the same formats.
//!
//! The store's layout and its reader are in `lossbench-core`, shared with the trainer and the
//! collector; this crate holds what only writing a store needs.

pub mod archive;
pub mod convert;
pub mod geotiff;
pub mod packed;
pub mod plan;
pub mod stats;
pub mod store;
pub mod summary;
pub mod synth;
