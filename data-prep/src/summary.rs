//! The human-readable account of a store: printed by `data-prep convert` and `data-prep info`.

use std::fmt::Write;

use lossbench_core::layout::{Split, StoreAttributes};

pub fn render(path: &std::path::Path, a: &StoreAttributes) -> String {
    let mut s = String::new();
    let acc = &a.accounting;
    let _ = writeln!(s, "store      {}", path.display());
    let _ = writeln!(s, "source     {} at {}", a.source.format, a.source.path);
    let _ = writeln!(s, "splits     {}", a.source.splits);
    let _ = writeln!(
        s,
        "written by {} {} (store format {})",
        a.tool.name, a.tool.version, a.format_version
    );
    let _ = writeln!(s, "\npatches");
    let _ = writeln!(s, "  {:<34}{:>9}", "input", acc.input_patches);
    for split in Split::ALL {
        let n = acc.written.get(&split).copied().unwrap_or(0);
        let _ = writeln!(s, "  {:<34}{:>9}", format!("written, {split}"), n);
    }
    for (what, n) in [
        ("excluded, seasonal snow", acc.excluded_snow),
        ("excluded, cloud or shadow", acc.excluded_cloud),
        ("excluded, no 19-class label", acc.excluded_no_label),
        (
            "excluded, in no split list",
            acc.excluded_not_in_split_lists,
        ),
        ("rejected (bad input)", acc.rejected),
    ] {
        let _ = writeln!(s, "  {what:<34}{n:>9}");
    }
    let _ = writeln!(s, "\nlabel counts per split");
    let _ = writeln!(
        s,
        "  {:<50}{:>10}{:>11}{:>10}",
        "class", "train", "validation", "test"
    );
    for (c, name) in a.classes.iter().enumerate() {
        let count = |sp: Split| a.splits.get(&sp).map(|i| i.label_counts[c]).unwrap_or(0);
        let short: String = name.chars().take(48).collect();
        let _ = writeln!(
            s,
            "  {short:<50}{:>10}{:>11}{:>10}",
            count(Split::Train),
            count(Split::Validation),
            count(Split::Test)
        );
    }
    let _ = writeln!(s, "\nband statistics over the training split");
    for (group, bands) in &a.band_groups {
        for b in bands {
            if let Some(st) = a.band_stats.get(b) {
                let _ = writeln!(
                    s,
                    "  {group} {b}  mean {:>10.3}  std {:>10.3}",
                    st.mean, st.std
                );
            }
        }
    }
    s
}
