//! The report's table of runs: readable loss parameters, status, best epoch, progress,
//! attempts, configuration, code and wall time; in natural order, sortable.

use std::fmt::Write;

use serde_json::Value;

use super::page::escape;
use super::setups::{arch_title, natural_key};
use crate::results::RunRow;

/// A TOML/JSON value as a person writes it: `2` for 2.0, strings bare, lists and tables
/// compact.
fn readable(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            Some(f) => format!("{f}"),
            None => n.to_string(),
        },
        Value::String(s) => s.clone(),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(readable).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => {
            let parts: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{k}={}", readable(v)))
                .collect();
            format!("{{{}}}", parts.join(", "))
        }
        other => other.to_string(),
    }
}

/// `focal: gamma=2, alpha=0.25` from the runs table's `loss_params` JSON.
pub fn loss_text(params: &str) -> String {
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(params) else {
        return params.to_string();
    };
    let name = map
        .get("name")
        .map(readable)
        .unwrap_or_else(|| "mix".into());
    let rest: Vec<String> = map
        .iter()
        .filter(|(k, _)| k.as_str() != "name")
        .map(|(k, v)| format!("{k}={}", readable(v)))
        .collect();
    if rest.is_empty() {
        name
    } else {
        format!("{name}: {}", rest.join(", "))
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

pub fn table(runs: &[RunRow]) -> String {
    let mut sorted: Vec<&RunRow> = runs.iter().collect();
    sorted.sort_by_key(|r| natural_key(&r.run_id));
    let mut html = format!(
        "<h2>Runs ({})</h2><div class=wrap><table class=sortable><thead><tr><th>run</th><th>network</th><th>loss</th>\
         <th>status</th><th>best epoch</th><th>epochs</th><th>attempts</th><th>config</th><th>code</th><th>wall time</th>\
         </tr></thead><tbody>",
        runs.len()
    );
    for (i, r) in sorted.iter().enumerate() {
        let _ = write!(
            html,
            "<tr><td data-v={i}>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td data-v={}>{}/{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td data-v={}>{}</td></tr>",
            escape(&r.run_id),
            escape(&arch_title(&r.arch)),
            escape(&loss_text(&r.loss_params)),
            escape(&r.status),
            r.best_epoch.map_or("–".into(), |e| e.to_string()),
            r.epochs_done,
            r.epochs_done,
            r.epochs_planned,
            r.attempts,
            escape(&r.config_hash[..8.min(r.config_hash.len())]),
            escape(&r.code_revision),
            r.wall_s.unwrap_or(0.0),
            r.wall_s.map_or("–".into(), duration),
        );
    }
    html.push_str("</tbody></table></div>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_parameters_read_as_written() {
        assert_eq!(
            loss_text(r#"{"name":"focal","gamma":2.0,"alpha":0.25}"#),
            "focal: gamma=2, alpha=0.25"
        );
        assert_eq!(loss_text(r#"{"name":"ce"}"#), "ce");
        assert_eq!(
            loss_text(r#"{"mix":[{"name":"ce","weight":0.5},{"name":"focal","weight":0.5}]}"#),
            "mix: mix=[{name=ce, weight=0.5}, {name=focal, weight=0.5}]"
        );
        assert_eq!(duration(75.0), "1 min 15 s");
        assert_eq!(duration(7300.0), "2 h 1 min");
    }
}
