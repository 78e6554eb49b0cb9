//! Result rows: a table on stdout, and a CSV file and an SVG plot under `target/bench/`.

use std::fmt::Write;

/// One measured configuration.
pub struct Row {
    /// What was run.
    pub label: String,
    /// Named figures, in column order.
    pub figures: Vec<(&'static str, f64)>,
}

/// Every figure name of `rows`, in the order first seen: rows of one table may differ
/// (the store alone has no ack latency, the hub rows have a CPU figure).
pub fn columns(rows: &[Row]) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for (name, _) in rows.iter().flat_map(|row| &row.figures) {
        if !names.contains(name) {
            names.push(name);
        }
    }
    names
}

impl Row {
    /// The figure `name` (NaN: this row does not have it).
    pub fn figure(&self, name: &str) -> f64 {
        self.figures
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, v)| *v)
    }
}

/// The run of `runs` with the median `column`, with how far its runs spread in that
/// column added as `spread` ((max - min) / median, percent). With an even number of
/// runs, the higher of the two middle ones.
pub fn median_by(mut runs: Vec<Row>, column: &str, spread: &'static str) -> Row {
    runs.sort_by(|a, b| a.figure(column).total_cmp(&b.figure(column)));
    let low = runs[0].figure(column);
    let high = runs[runs.len() - 1].figure(column);
    let mut median = runs.swap_remove(runs.len() / 2);
    let width = 100.0 * (high - low) / median.figure(column);
    median.figures.push((spread, width));
    median
}

/// `text` as one CSV field (RFC 4180: quoted when it holds a comma, quote or newline).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Prints the rows as a table and writes `target/bench/<scenario>.csv` and `.svg`. A
/// figure a row does not have is blank in the CSV and `-` in the table.
pub fn print_and_save(scenario: &str, rows: &[Row]) {
    if rows.is_empty() {
        return;
    }
    let columns = columns(rows);
    let mut table = format!("{:<40}", "run");
    let mut csv = String::from("run");
    for name in &columns {
        let _ = write!(table, " {name:>16}");
        let _ = write!(csv, ",{name}");
    }
    table.push('\n');
    csv.push('\n');
    for row in rows {
        let _ = write!(table, "{:<40}", row.label);
        let _ = write!(csv, "{}", csv_field(&row.label));
        for name in &columns {
            match row.figures.iter().find(|(n, _)| n == name) {
                Some((_, value)) => {
                    let _ = write!(table, " {value:>16.1}");
                    let _ = write!(csv, ",{value}");
                }
                None => {
                    let _ = write!(table, " {:>16}", "-");
                    csv.push(',');
                }
            }
        }
        table.push('\n');
        csv.push('\n');
    }
    print!("{table}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let path = dir.join(format!("{scenario}.csv"));
        if std::fs::write(&path, csv).is_ok() {
            println!("csv: {}", path.display());
        }
        let path = dir.join(format!("{scenario}.svg"));
        if std::fs::write(&path, crate::plot::svg(scenario, rows)).is_ok() {
            println!("plot: {}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_with_commas_or_quotes_are_quoted_in_the_csv() {
        assert_eq!(csv_field("100 pairs"), "100 pairs");
        assert_eq!(csv_field("100 pairs, flush"), "\"100 pairs, flush\"");
        assert_eq!(csv_field("a \"b\""), "\"a \"\"b\"\"\"");
    }

    #[test]
    fn the_median_run_is_kept_whole_with_its_spread() {
        let run = |p99: f64, p50: f64| Row {
            label: "hub".into(),
            figures: vec![("p50_ms", p50), ("p99_ms", p99)],
        };
        let median = median_by(
            vec![run(8.0, 1.0), run(4.0, 3.0), run(6.0, 2.0)],
            "p99_ms",
            "p99_spread_pct",
        );
        // The other figures come from the same run, not medians of their own.
        assert_eq!(median.figure("p50_ms"), 2.0);
        assert_eq!(median.figure("p99_ms"), 6.0);
        assert!((median.figure("p99_spread_pct") - 100.0 * 4.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn columns_are_the_union_in_first_seen_order() {
        let rows = [
            Row {
                label: "a".into(),
                figures: vec![("x", 1.0), ("y", 2.0)],
            },
            Row {
                label: "b".into(),
                figures: vec![("x", 3.0), ("z", 4.0)],
            },
        ];
        assert_eq!(columns(&rows), ["x", "y", "z"]);
        assert!(rows[1].figure("y").is_nan());
        assert_eq!(rows[1].figure("z"), 4.0);
    }
}
