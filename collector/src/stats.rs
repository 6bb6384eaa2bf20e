//! Statistics across seeds (docs/results.md, "Across seeds"): mean, sample standard deviation
//! and the 95% confidence interval of the mean from Student's t distribution with n − 1
//! degrees of freedom, the interval a reader of a paper expects from a few seeds.

use serde::Serialize;

/// Mean, spread and 95% interval of one metric over runs (seeds).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeedSummary {
    pub runs: usize,
    pub mean: f64,
    /// The sample standard deviation (n − 1); 0 for one run.
    pub std: f64,
    /// mean ∓ t(0.975, n − 1) · std / √n; `None` for one run (no spread to estimate).
    pub ci95: Option<(f64, f64)>,
}

/// Summarises `values` (one per seed); `None` for no values.
pub fn summarise(values: &[f64]) -> Option<SeedSummary> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n == 1 {
        return Some(SeedSummary {
            runs: 1,
            mean,
            std: 0.0,
            ci95: None,
        });
    }
    let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let std = var.sqrt();
    let half = student_t_quantile(0.975, (n - 1) as f64) * std / (n as f64).sqrt();
    Some(SeedSummary {
        runs: n,
        mean,
        std,
        ci95: Some((mean - half, mean + half)),
    })
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 − x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let sum = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |s, (i, c)| s + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularised incomplete beta function I_x(a, b), by its continued fraction (modified
/// Lentz), on the side where it converges fast.
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    d = 1.0 / if d.abs() < tiny { tiny } else { d };
    let mut f = d;
    for m in 1..500 {
        let m = f64::from(m);
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            d = 1.0 / if d.abs() < tiny { tiny } else { d };
            c = 1.0 + numerator / c;
            c = if c.abs() < tiny { tiny } else { c };
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-16 {
            break;
        }
    }
    front * f / a
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5);
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// The `p` quantile (p in (0.5, 1)) of Student's t with `df` degrees of freedom, by bisection
/// of the distribution function to double precision.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 1.0);
    while student_t_cdf(hi, df) < p {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-15 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy.stats.t.ppf(0.975, df) and t.cdf, scipy 1.17.1.
    #[test]
    fn student_t_agrees_with_scipy() {
        for (df, q) in [
            (1.0, 12.706204736174694),
            (2.0, 4.302652729749462),
            (3.0, 3.1824463052837078),
            (4.0, 2.7764451051977934),
            (9.0, 2.262157162798205),
            (29.0, 2.045229642132703),
            (100.0, 1.9839715185235518),
            (1000.0, 1.9623390808264083),
        ] {
            let ours = student_t_quantile(0.975, df);
            assert!((ours - q).abs() < 1e-10 * q, "df {df}: {ours} vs {q}");
        }
        assert!((student_t_cdf(1.5, 3.0) - 0.8847080673775886).abs() < 1e-13);
        assert!((student_t_cdf(-2.0, 7.0) - 0.042809664281488025).abs() < 1e-13);
    }

    #[test]
    fn summaries_of_seeds() {
        assert_eq!(summarise(&[]), None);
        let one = summarise(&[0.7]).unwrap();
        assert_eq!((one.mean, one.std, one.ci95), (0.7, 0.0, None));
        let s = summarise(&[0.6, 0.7, 0.8]).unwrap();
        assert!((s.mean - 0.7).abs() < 1e-12 && (s.std - 0.1).abs() < 1e-12);
        let (lo, hi) = s.ci95.unwrap();
        let half = 4.302652729749462 * 0.1 / 3f64.sqrt();
        assert!((lo - (0.7 - half)).abs() < 1e-9 && (hi - (0.7 + half)).abs() < 1e-9);
    }
}
