//! Exact per-band statistics: integer sums of values and squares, so the result does not depend
//! on how patches were grouped or ordered, and only the final division rounds.

use serde::{Deserialize, Serialize};

use lossbench_core::layout::BandStats;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BandSums {
    pub count: u64,
    pub sum: u64,
    pub sum_sq: u128,
}

impl BandSums {
    pub fn of(values: &[u16]) -> Self {
        let (sum, sum_sq) = values.iter().fold((0u64, 0u64), |(s, q), &v| {
            let v = v as u64;
            (s + v, q + v * v)
        });
        BandSums {
            count: values.len() as u64,
            sum,
            sum_sq: sum_sq as u128,
        }
    }

    pub fn add(&mut self, other: &BandSums) {
        self.count += other.count;
        self.sum += other.sum;
        self.sum_sq += other.sum_sq;
    }

    /// Mean and population standard deviation; `None` for no values.
    pub fn stats(&self) -> Option<BandStats> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as u128;
        let s = self.sum as u128;
        // n² · variance = n · Σv² − (Σv)², exact in integers.
        let scaled_var = n * self.sum_sq - s * s;
        let mean = self.sum as f64 / self.count as f64;
        let var = scaled_var as f64 / (n as f64 * n as f64);
        Some(BandStats {
            mean,
            std: var.sqrt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_combine_to_the_direct_statistics() {
        let values: Vec<u16> = (0..10_000u32).map(|i| ((i * 7919) % 6000) as u16).collect();
        let whole = BandSums::of(&values);
        let mut parts = BandSums::default();
        for chunk in values.chunks(333) {
            parts.add(&BandSums::of(chunk));
        }
        assert_eq!(whole, parts);
        let st = whole.stats().unwrap();
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / values.len() as f64;
        assert!((st.mean - mean).abs() < 1e-9);
        assert!((st.std - var.sqrt()).abs() < 1e-9);
        assert_eq!(BandSums::default().stats(), None);
    }
}
