//! A file mapped read-only into memory, viewed as tensors without a copy: the node's shared
//! copy of a resident split ([`super::shared`]).

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// A file mapped read-only into this process; unmapped on drop.
pub struct Mapping {
    address: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until dropped; tensors viewing it only read.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the address and length mmap returned.
        unsafe { libc::munmap(self.address, self.len) };
    }
}

impl Mapping {
    /// Maps the whole of `file`.
    pub fn of(file: &fs::File, what: &Path) -> Result<Mapping> {
        let len = file.metadata()?.len() as usize;
        // SAFETY: a fresh shared read-only mapping of a whole file this process opened.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if address == libc::MAP_FAILED {
            bail!(
                "mapping {}: {}",
                what.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping { address, len })
    }

    /// A tensor of `shape` and `kind` viewing the bytes at `offset` (no copy).
    pub fn view(&self, offset: usize, shape: &[i64], kind: Kind) -> Tensor {
        let bytes: i64 = shape.iter().product::<i64>() * kind.elt_size_in_bytes() as i64;
        assert!(
            offset + bytes as usize <= self.len,
            "a view inside the mapping"
        );
        // SAFETY: the bytes lie inside the mapping, which outlives the tensor (ResidentSplit
        // drops its tensors before its mapping); libtorch only reads them.
        unsafe {
            let data = (self.address as *const u8).add(offset);
            Tensor::from_blob(data, shape, &[], kind, Device::Cpu)
        }
    }

    /// This process's proportional share of the mapping's resident memory (PSS), in bytes.
    pub fn pss(&self) -> Option<u64> {
        let smaps = fs::read_to_string("/proc/self/smaps").ok()?;
        let start = format!("{:x}-", self.address as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        lines.next()?;
        let pss = lines.find(|l| l.starts_with("Pss:"))?;
        Some(pss.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
}
