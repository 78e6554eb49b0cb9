//! A plot per run: one horizontal bar chart per figure (column), the runs (rows) as
//! bars, written as a self-contained SVG next to the CSV. No plotting library: the
//! charts are a few rectangles and labels.

use crate::report::Row;
use std::fmt::Write;

const PANEL_W: f64 = 520.0;
const LABEL_W: f64 = 300.0;
const BAR_H: f64 = 16.0;
const GAP: f64 = 6.0;
const TITLE_H: f64 = 26.0;
const PAD: f64 = 12.0;
const COLOURS: [&str; 6] = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2",
];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn number(value: f64) -> String {
    if !value.is_finite() {
        // A figure that does not apply to this run (the relay's CPU, measured in-process).
        "n/a".into()
    } else if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.3}")
    }
}

/// The SVG document for `rows` of scenario `title`.
pub fn svg(title: &str, rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let columns = crate::report::columns(rows);
    let panel_h = TITLE_H + rows.len() as f64 * (BAR_H + GAP) + PAD;
    let width = LABEL_W + PANEL_W + 2.0 * PAD;
    let height = TITLE_H + PAD + columns.len() as f64 * panel_h;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{PAD}" y="18" font-size="15" font-weight="bold">hub-bench {}</text>"#,
        escape(title)
    );
    for (c, column) in columns.iter().enumerate() {
        let top = TITLE_H + PAD + c as f64 * panel_h;
        let values: Vec<f64> = rows.iter().map(|row| row.figure(column)).collect();
        let max = values.iter().copied().fold(0.0_f64, f64::max);
        let _ = writeln!(
            out,
            r#"<text x="{PAD}" y="{}" font-weight="bold">{}</text>"#,
            top + 16.0,
            escape(column)
        );
        for (r, (row, value)) in rows.iter().zip(&values).enumerate() {
            let y = top + TITLE_H + r as f64 * (BAR_H + GAP);
            let w = if !value.is_finite() {
                0.0
            } else if max > 0.0 {
                (value / max * (PANEL_W - 80.0)).max(1.0)
            } else {
                1.0
            };
            let colour = COLOURS[r % COLOURS.len()];
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{}" y="{y}" width="{w:.1}" height="{BAR_H}" fill="{colour}"/><text x="{}" y="{}">{}</text>"#,
                PAD + LABEL_W - 8.0,
                y + BAR_H - 4.0,
                escape(&row.label),
                PAD + LABEL_W,
                PAD + LABEL_W + w + 4.0,
                y + BAR_H - 4.0,
                number(*value)
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_row_and_column_scaled_to_the_largest() {
        let rows = vec![
            Row {
                label: "a <b>".into(),
                figures: vec![("rate", 50.0), ("p99", 2.0)],
            },
            Row {
                label: "c".into(),
                figures: vec![("rate", 100.0), ("p99", 1.0)],
            },
        ];
        let doc = svg("t", &rows);
        assert_eq!(doc.matches("<rect x=").count(), 4);
        assert!(doc.contains("a &lt;b&gt;"));
        // The largest value of a column gets the full bar width.
        let full = format!(r#"width="{:.1}""#, PANEL_W - 80.0);
        assert_eq!(doc.matches(&full).count(), 2);
        assert!(doc.contains(r#"width="220.0""#), "{doc}");
    }
}
