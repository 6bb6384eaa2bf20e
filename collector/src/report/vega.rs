//! The report's chart specs (Vega-Lite 6): curves of several setups with one panel per
//! quantity, each panel's y axis fitted to its data, a mean line per setup with a band over its
//! seeds, labelled reference lines, values on hover, setups toggled from the legend and the x
//! axis zoomed by dragging or scrolling.

use serde::Serialize;
use serde_json::{Value, json};

/// Colours per setup (colour-blind safe: Okabe-Ito), the same setup the same colour in every
/// chart of an architecture.
pub const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442",
];

/// One point of a curve: a setup's mean over its seeds at `x` in panel `panel`, with the band
/// it spans (lowest and highest seed).
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub setup: String,
    pub panel: String,
    pub x: f64,
    pub mean: f64,
    pub low: f64,
    pub high: f64,
    pub seeds: usize,
}

impl Point {
    /// The point of `values` (one per seed; not empty).
    pub fn of(setup: &str, panel: &str, x: f64, values: &[f64]) -> Point {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let (low, high) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        Point {
            setup: setup.into(),
            panel: panel.into(),
            x,
            mean,
            low,
            high,
            seeds: values.len(),
        }
    }
}

/// A horizontal reference line in one panel, with its label.
pub struct Reference {
    pub panel: String,
    pub y: f64,
    pub label: String,
}

/// The colour scale of `order` (the setups).
fn colours(order: &[String]) -> Value {
    let range: Vec<&str> = (0..order.len())
        .map(|i| PALETTE[i % PALETTE.len()])
        .collect();
    json!({"domain": order, "range": range})
}

/// Curves of `points` in panels (`panels`, in this order), x titled `x_title`: one layered
/// view per panel with its own data; the legend selection is shared by every panel's lines.
pub fn curves(
    points: &[Point],
    references: &[Reference],
    panels: &[&str],
    order: &[String],
    x_title: &str,
) -> Value {
    // Panels without points (a metric no run recorded) are left out.
    let panels: Vec<&str> = panels
        .iter()
        .copied()
        .filter(|panel| points.iter().any(|p| p.panel == *panel))
        .collect();
    let width = if panels.len() > 1 { 330 } else { 720 };
    let views: Vec<Value> = panels
        .iter()
        .enumerate()
        .map(|(k, panel)| {
            let mine: Vec<&Point> = points.iter().filter(|p| p.panel == *panel).collect();
            let refs: Vec<&Reference> = references.iter().filter(|r| r.panel == *panel).collect();
            panel_view(k, panel, &mine, &refs, order, x_title, width)
        })
        .collect();
    let names: Vec<String> = (0..panels.len()).map(|k| format!("lines_{k}")).collect();
    json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "params": [{"name": "pick", "select": {"type": "point", "fields": ["setup"]}, "bind": "legend", "views": names}],
        "concat": views,
        "columns": 3,
        "resolve": {"scale": {"y": "independent"}},
        "config": {"legend": {"orient": "bottom", "columns": 4, "labelLimit": 260}}
    })
}

/// One panel: the band, the mean lines (named `lines_<k>`, x zoomable) and the references.
fn panel_view(
    k: usize,
    panel: &str,
    points: &[&Point],
    refs: &[&Reference],
    order: &[String],
    x_title: &str,
    width: u32,
) -> Value {
    let picked =
        |on: f64, off: f64| json!({"condition": {"param": "pick", "value": on}, "value": off});
    // Epochs and other counts: whole ticks only.
    let whole = points.iter().all(|p| p.x.fract() == 0.0);
    let axis = if whole {
        json!({"tickMinStep": 1, "format": "d"})
    } else {
        json!({})
    };
    let x = json!({"field": "x", "type": "quantitative", "title": x_title, "scale": {"zero": false, "nice": false}, "axis": axis});
    let y = |field: &str| json!({"field": field, "type": "quantitative", "scale": {"zero": false}, "title": panel});
    let colour = json!({"field": "setup", "type": "nominal", "title": "setup (click to show one)", "scale": colours(order), "sort": order});
    let band = json!({
        "mark": {"type": "area", "interpolate": "monotone"},
        "encoding": {"x": x, "y": y("low"), "y2": {"field": "high"}, "color": colour, "opacity": picked(0.18, 0.03)}
    });
    let lines = json!({
        "name": format!("lines_{k}"),
        "params": [{"name": format!("zoom_{k}"), "select": {"type": "interval", "encodings": ["x"]}, "bind": "scales"}],
        "mark": {"type": "line", "point": {"size": 28}, "strokeWidth": 2},
        "encoding": {
            "x": x, "y": y("mean"), "color": colour, "opacity": picked(1.0, 0.12),
            "tooltip": [
                {"field": "setup"}, {"field": "x", "title": x_title},
                {"field": "mean", "format": ".4f"}, {"field": "low", "title": "lowest seed", "format": ".4f"},
                {"field": "high", "title": "highest seed", "format": ".4f"}, {"field": "seeds"}
            ]
        }
    });
    let mut layers = vec![band, lines];
    if !refs.is_empty() {
        let values: Vec<Value> = refs
            .iter()
            .map(|r| json!({"y": r.y, "label": r.label}))
            .collect();
        layers.push(json!({
            "data": {"values": values},
            "layer": [
                {"mark": {"type": "rule", "strokeDash": [5, 4], "color": "#555"},
                 "encoding": {"y": {"field": "y", "type": "quantitative"}}},
                {"mark": {"type": "text", "align": "left", "dx": 4, "dy": -6, "color": "#333", "fontSize": 11},
                 "encoding": {"y": {"field": "y", "type": "quantitative"}, "x": {"value": 0}, "text": {"field": "label"}}}
            ]
        }));
    }
    json!({
        "title": {"text": panel, "fontSize": 13},
        "width": width,
        "height": 240,
        "data": {"values": points},
        "layer": layers
    })
}

/// Grouped bars: per category (x, in `categories`' order) a bar per setup (its mean over its
/// seeds, the seeds' range on hover), titled `x_title` and `y_title`. A point's `panel` is its
/// category.
pub fn bars(
    points: &[Point],
    categories: &[String],
    order: &[String],
    x_title: &str,
    y_title: &str,
) -> Value {
    let colour = json!({"field": "setup", "type": "nominal", "title": "setup", "scale": colours(order), "sort": order});
    json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "width": 720,
        "height": 240,
        "data": {"values": points},
        "mark": "bar",
        "encoding": {
            "x": {"field": "panel", "type": "nominal", "title": x_title, "sort": categories, "axis": {"labelAngle": -40}},
            "xOffset": {"field": "setup", "sort": order},
            "y": {"field": "mean", "type": "quantitative", "title": y_title},
            "color": colour,
            "tooltip": [
                {"field": "setup"}, {"field": "panel", "title": x_title}, {"field": "mean", "format": ".4g"},
                {"field": "low", "title": "lowest seed", "format": ".4g"},
                {"field": "high", "title": "highest seed", "format": ".4g"}, {"field": "seeds"}
            ]
        },
        "config": {"legend": {"orient": "bottom", "columns": 4, "labelLimit": 260}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_carry_every_point_panel_and_colour() {
        let points = [
            Point::of("CE (ce)", "F1", 1.0, &[0.5, 0.6]),
            Point::of("CE (ce)", "mAP", 1.0, &[0.7]),
        ];
        assert_eq!(
            (points[0].low, points[0].high, points[0].seeds),
            (0.5, 0.6, 2)
        );
        assert!((points[0].mean - 0.55).abs() < 1e-12);
        let refs = [Reference {
            panel: "F1".into(),
            y: 0.55,
            label: "0.55".into(),
        }];
        let spec = curves(
            &points,
            &refs,
            &["F1", "mAP", "none"],
            &["CE (ce)".into()],
            "epoch",
        );
        let views = spec["concat"].as_array().unwrap();
        assert_eq!(views.len(), 2, "a panel without points is left out");
        assert_eq!(views[0]["title"]["text"], "F1");
        assert_eq!(views[0]["data"]["values"].as_array().unwrap().len(), 1);
        let layers = views[0]["layer"].as_array().unwrap();
        assert_eq!(layers.len(), 3, "band, lines, the reference");
        assert_eq!(views[1]["layer"].as_array().unwrap().len(), 2);
        assert_eq!(
            layers[1]["encoding"]["color"]["scale"]["range"],
            json!(["#0072B2"])
        );
        assert_eq!(layers[1]["encoding"]["x"]["axis"]["tickMinStep"], 1);
        assert_eq!(spec["params"][0]["views"], json!(["lines_0", "lines_1"]));
    }
}

/// One dot of a scatter: a series' `y` at `x` in panel `panel`, with a hover label.
#[derive(Debug, Clone, Serialize)]
pub struct Dot {
    pub series: String,
    pub panel: String,
    pub x: f64,
    pub y: f64,
    pub label: String,
}

/// Scatter plots, one panel per parameter (a log x axis where the values span more than a
/// factor of 20, all positive: learning rates), series coloured as the setups are.
pub fn dots(points: &[Dot], panels: &[&str], order: &[String], y_title: &str) -> Value {
    let views: Vec<Value> = panels
        .iter()
        .map(|panel| {
            let mine: Vec<&Dot> = points.iter().filter(|p| p.panel == *panel).collect();
            let (lo, hi) = mine.iter().fold((f64::INFINITY, 0f64), |(a, b), p| (a.min(p.x), b.max(p.x)));
            let scale = if lo > 0.0 && hi / lo > 20.0 { json!({"type": "log"}) } else { json!({"zero": false}) };
            json!({
                "width": 330,
                "height": 220,
                "data": {"values": mine},
                "mark": {"type": "point", "filled": true, "opacity": 0.8},
                "encoding": {
                    "x": {"field": "x", "type": "quantitative", "title": panel, "scale": scale},
                    "y": {"field": "y", "type": "quantitative", "title": y_title, "scale": {"zero": false}},
                    "color": {"field": "series", "type": "nominal", "title": "loss", "scale": colours(order), "sort": order},
                    "tooltip": [{"field": "label", "title": "trial"}, {"field": "x", "title": panel, "format": ".4g"},
                                {"field": "y", "title": y_title, "format": ".4g"}]
                }
            })
        })
        .collect();
    json!({
        "$schema": "https://vega.github.io/schema/vega-lite/v6.json",
        "concat": views,
        "columns": 3,
        "config": {"legend": {"orient": "bottom", "columns": 4, "labelLimit": 260}}
    })
}
