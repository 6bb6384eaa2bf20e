//! Third-party decoders fed bytes from users' files. Some assert instead of returning an error
//! on malformed input (the parquet crate 60.1 on inconsistent column-chunk metadata: "column
//! start and length should not be negative"); a damaged file must be an error that names it,
//! never a crash of a conversion or a merge, so such calls run here.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use anyhow::{Result, anyhow};

/// Runs `read` on the contents of `path`; a panic inside it becomes an error naming the file.
pub fn contain_panics<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(read)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "the decoder failed".into());
        Err(anyhow!("{}: damaged file ({why})", path.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_naming_the_file() {
        let e =
            contain_panics::<()>(Path::new("x/y.parquet"), || panic!("bad offset")).unwrap_err();
        assert_eq!(e.to_string(), "x/y.parquet: damaged file (bad offset)");
        assert_eq!(contain_panics(Path::new("z"), || Ok(3)).unwrap(), 3);
    }
}
