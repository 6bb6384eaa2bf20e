//! Inline SVG charts for the report: a line chart over epochs (validation F1, sharpness), an xy
//! chart over a continuous axis (landscape slices) and a grouped bar chart (per-class F1). SVG
//! text is laid out by the browser, so no font files are needed.

use std::fmt::Write;

/// Colours per series (colour-blind safe, Okabe-Ito).
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One named series of (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 760.0;
const LEFT: f64 = 56.0;
const TOP: f64 = 16.0;

fn legend(out: &mut String, names: &[&str], x: f64, y: f64) {
    for (i, name) in names.iter().enumerate() {
        let yy = y + 18.0 * i as f64;
        let color = PALETTE[i % PALETTE.len()];
        let _ = write!(
            out,
            r#"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/>"#,
            yy - 10.0
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{yy}" font-size="12">{}</text>"#,
            x + 18.0,
            escape(name)
        );
    }
}

/// Horizontal grid lines and tick values of a y axis from 0 to `y_max`.
fn y_grid(out: &mut String, plot_h: f64, y_max: f64) {
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = TOP + plot_h * (1.0 - v / y_max);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
            WIDTH - 170.0
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{v:.2}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
}

/// The x axis title, under the plot.
fn x_title(out: &mut String, height: f64, plot_w: f64, label: &str) {
    let _ = write!(
        out,
        r#"<text x="{:.1}" y="{}" font-size="12" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        height - 8.0,
        escape(label)
    );
}

/// The y axis title, turned along the left edge and centred at `middle`.
fn y_title(out: &mut String, middle: f64, label: &str) {
    let _ = write!(
        out,
        r#"<text x="14" y="{middle:.1}" font-size="12" transform="rotate(-90 14 {middle:.1})" text-anchor="middle">{}</text>"#,
        escape(label)
    );
}

/// Each series as a polyline (with point markers when `markers`), then the legend.
fn draw_series(
    out: &mut String,
    series: &[Series],
    px: impl Fn(f64) -> f64,
    py: impl Fn(f64) -> f64,
    markers: bool,
) {
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let _ = write!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        if markers {
            for &(x, y) in &s.points {
                let _ = write!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
    }
    legend(
        out,
        &series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        WIDTH - 160.0,
        TOP + 10.0,
    );
}

/// Lines with markers; x is an integer (epoch), y in [0, y_max]. A dashed horizontal guide at
/// `guide` when given.
pub fn line_chart(series: &[Series], x_label: &str, y_label: &str, guide: Option<f64>) -> String {
    let (height, plot_h) = (340.0, 280.0);
    let plot_w = WIDTH - 170.0 - LEFT;
    let x_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(guide.unwrap_or(0.0), f64::max)
        .max(0.1);
    let y_max = (y_max * 10.0).ceil() / 10.0;
    let px = |x: f64| {
        LEFT + plot_w
            * if x_max > 1.0 {
                (x - 1.0) / (x_max - 1.0)
            } else {
                0.5
            }
    };
    let py = |y: f64| TOP + plot_h * (1.0 - y / y_max);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img">"#
    );
    y_grid(&mut out, plot_h, y_max);
    // Integer ticks, at most about ten.
    let step = ((x_max - 1.0) / 10.0).ceil().max(1.0);
    let mut x = 1.0;
    while x <= x_max {
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{x}</text>"#,
            px(x),
            TOP + plot_h + 16.0
        );
        x += step;
    }
    x_title(&mut out, height, plot_w, x_label);
    y_title(&mut out, height / 2.0, y_label);
    if let Some(g) = guide {
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
            LEFT + plot_w,
            py(g),
            py(g)
        );
    }
    draw_series(&mut out, series, px, py, true);
    out.push_str("</svg>");
    out
}

/// Lines over a continuous x (α, t): 5 ticks on each axis, y from the data's range (shared by
/// every series, so curves of several losses sit on one scale).
pub fn xy_chart(series: &[Series], x_label: &str, y_label: &str) -> String {
    let (height, plot_h) = (300.0, 240.0);
    let plot_w = WIDTH - 170.0 - LEFT;
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (y0, y1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    if !x0.is_finite() || !y0.is_finite() {
        return "<p>No points.</p>".into();
    }
    let (xs, ys) = ((x1 - x0).max(1e-12), (y1 - y0).max(1e-12));
    let px = |x: f64| LEFT + plot_w * (x - x0) / xs;
    let py = |y: f64| TOP + plot_h * (1.0 - (y - y0) / ys);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img">"#
    );
    for i in 0..=4 {
        let (x, y) = (x0 + xs * i as f64 / 4.0, y0 + ys * i as f64 / 4.0);
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w,
            py(y),
            py(y)
        );
        let _ = write!(
            out,
            r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{y:.3}</text>"#,
            LEFT - 6.0,
            py(y) + 4.0
        );
        let _ = write!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{x:.2}</text>"#,
            px(x),
            TOP + plot_h + 16.0
        );
    }
    x_title(&mut out, height, plot_w, x_label);
    y_title(&mut out, height / 2.0, y_label);
    draw_series(&mut out, series, px, py, false);
    out.push_str("</svg>");
    out
}

/// Grouped vertical bars: one group per category, one bar per series (`values[series][category]`).
pub fn bar_chart(
    categories: &[&str],
    series: &[&str],
    values: &[Vec<f64>],
    y_label: &str,
) -> String {
    let plot_h = 260.0;
    let height = plot_h + 200.0;
    let plot_w = WIDTH - 170.0 - LEFT;
    let y_max = values.iter().flatten().fold(0.1f64, |m, &v| m.max(v));
    let y_max = (y_max * 10.0).ceil() / 10.0;
    let group = plot_w / categories.len().max(1) as f64;
    let bar = (group * 0.8) / series.len().max(1) as f64;
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" role="img">"#
    );
    y_grid(&mut out, plot_h, y_max);
    y_title(&mut out, (plot_h + 40.0) / 2.0, y_label);
    for (c, name) in categories.iter().enumerate() {
        let x0 = LEFT + group * c as f64 + group * 0.1;
        for (s, per_category) in values.iter().enumerate() {
            let v = per_category[c];
            let h = plot_h * v / y_max;
            let _ = write!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {v:.3}</title></rect>"#,
                x0 + bar * s as f64,
                TOP + plot_h - h,
                bar.max(1.0),
                PALETTE[s % PALETTE.len()],
                escape(&format!("{} / {name}", series[s]))
            );
        }
        let (lx, ly) = (x0 + group * 0.4, TOP + plot_h + 10.0);
        let _ = write!(
            out,
            r#"<text x="{lx:.1}" y="{ly:.1}" font-size="10" text-anchor="end" transform="rotate(-55 {lx:.1} {ly:.1})">{}</text>"#,
            escape(&shorten(name, 30))
        );
    }
    legend(&mut out, series, WIDTH - 160.0, TOP + 10.0);
    out.push_str("</svg>");
    out
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_well_formed_svg_with_every_series() {
        let s = vec![
            Series {
                name: "ce".into(),
                points: vec![(1.0, 0.3), (2.0, 0.5)],
            },
            Series {
                name: "a<b".into(),
                points: vec![(1.0, 0.2), (2.0, 0.6)],
            },
        ];
        let svg = line_chart(&s, "epoch", "F1", Some(0.55));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a&lt;b") && svg.contains("stroke-dasharray"));
        let bars = bar_chart(
            &["x", "y", "z"],
            &["ce", "focal"],
            &[vec![0.1, 0.2, 0.3], vec![0.3, 0.2, 0.1]],
            "F1",
        );
        assert_eq!(bars.matches("<rect x=").count(), 6 + 2);
        let xy = xy_chart(&s, "α", "loss");
        assert_eq!(xy.matches("<polyline").count(), 2);
        assert!(xy.contains("2.00") && xy.contains("0.200"), "{xy}");
    }
}
