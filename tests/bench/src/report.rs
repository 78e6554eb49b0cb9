//! Result rows: a table on stdout, and a CSV file and an SVG plot under `target/bench/`.

use std::fmt::Write;

/// One measured configuration.
pub struct Row {
    /// What was run.
    pub label: String,
    /// Named figures, in column order.
    pub figures: Vec<(&'static str, f64)>,
}

/// Prints the rows as a table and writes `target/bench/<scenario>.csv` and `.svg`.
pub fn print_and_save(scenario: &str, rows: &[Row]) {
    let Some(first) = rows.first() else { return };
    let mut table = format!("{:<40}", "run");
    let mut csv = String::from("run");
    for (name, _) in &first.figures {
        let _ = write!(table, " {name:>16}");
        let _ = write!(csv, ",{name}");
    }
    table.push('\n');
    csv.push('\n');
    for row in rows {
        let _ = write!(table, "{:<40}", row.label);
        let _ = write!(csv, "{}", row.label);
        for (_, value) in &row.figures {
            let _ = write!(table, " {value:>16.1}");
            let _ = write!(csv, ",{value}");
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
