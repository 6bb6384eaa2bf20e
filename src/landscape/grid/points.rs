//! The points of a grid landscape: α (and β) on an even grid, or one point per checkpoint.

use crate::landscape::{KindSpec, Spec};

/// One point of the grid: its index and coordinates.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub index: usize,
    pub alpha: Option<f64>,
    pub beta: Option<f64>,
    /// `sharpness`: the checkpoint's epoch.
    pub epoch: Option<u32>,
}

fn linspace((from, to): (f64, f64), n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![from];
    }
    (0..n)
        .map(|i| from + (to - from) * i as f64 / (n - 1) as f64)
        .collect()
}

pub fn grid(spec: &Spec) -> Vec<Point> {
    let point = |index, alpha, beta, epoch| Point {
        index,
        alpha,
        beta,
        epoch,
    };
    match &spec.of {
        KindSpec::OneD { axes, .. } | KindSpec::Interp { axes, .. } => {
            linspace(axes.range, axes.points)
                .into_iter()
                .enumerate()
                .map(|(i, a)| point(i, Some(a), None, None))
                .collect()
        }
        KindSpec::TwoD { axes, .. } => {
            let (axis, n) = (linspace(axes.range, axes.points), axes.points);
            (0..n * n)
                .map(|k| point(k, Some(axis[k / n]), Some(axis[k % n]), None))
                .collect()
        }
        // One point per checkpoint (a spectrum's work is not a grid: landscape::spectrum).
        KindSpec::Sharpness { epochs, .. } | KindSpec::Spectrum { epochs, .. } => epochs
            .iter()
            .enumerate()
            .map(|(i, &e)| point(i, None, None, Some(e)))
            .collect(),
    }
}
