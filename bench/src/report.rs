//! Results as a human table on stdout and, with `--json`, one JSON line after it.

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// How many problem descriptions a run keeps; the rest are only counted.
const PROBLEMS_KEPT: usize = 8;

/// The first few problems of a run, described in words, for the table and the JSON line.
#[derive(Debug, Default, Clone)]
pub struct Problems(Vec<String>);

impl Problems {
    /// Keeps `what` if fewer than [`PROBLEMS_KEPT`] are kept already.
    pub fn note(&mut self, what: String) {
        if self.0.len() < PROBLEMS_KEPT {
            self.0.push(what);
        }
    }

    /// Adds another task's problems, within the same bound.
    pub fn extend(&mut self, other: Problems) {
        for what in other.0 {
            self.note(what);
        }
    }

    /// The problems kept, in the order noted.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// What one subcommand found.
pub struct Report {
    /// First line of the table.
    pub title: String,
    /// Label and value, in display order.
    pub rows: Vec<(String, String)>,
    /// Every figure, for scripts.
    pub json: Value,
    /// False when a correctness check failed (lost messages, dropped connections...): exit 1.
    pub passed: bool,
    /// Print the title alone as a one-line summary (plus any rows, which are problems).
    pub compact: bool,
}

impl Report {
    /// A report with no rows yet.
    pub fn new(title: impl Into<String>, json: Value) -> Report {
        Report {
            title: title.into(),
            rows: Vec::new(),
            json,
            passed: true,
            compact: false,
        }
    }

    /// Adds one table row.
    pub fn row(&mut self, label: impl Into<String>, value: impl Into<String>) {
        self.rows.push((label.into(), value.into()));
    }

    /// Prints the table, then the JSON line when asked.
    pub fn print(&self, json: bool) {
        println!("{}", self.title);
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (label, value) in &self.rows {
            println!("  {label:<width$}  {value}");
        }
        if !self.compact {
            println!(
                "  {:<width$}  {}",
                "result",
                if self.passed { "PASS" } else { "FAIL" }
            );
        }
        if json {
            let mut line = self.json.clone();
            line["passed"] = json!(self.passed);
            println!("{line}");
        }
    }
}

/// A histogram of microseconds, from 1 µs to 10 minutes at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds and precision are valid")
}

/// Percentiles of a latency histogram (µs), as JSON.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "count": h.len(),
        "mean_us": (h.mean() * 10.0).round() / 10.0,
        "p50_us": h.value_at_quantile(0.50),
        "p90_us": h.value_at_quantile(0.90),
        "p99_us": h.value_at_quantile(0.99),
        "max_us": h.max(),
    })
}

/// Percentiles of a latency histogram (µs), for a table cell.
pub fn latency_text(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "no samples".to_owned();
    }
    format!(
        "p50 {} / p90 {} / p99 {} / max {} µs",
        h.value_at_quantile(0.50),
        h.value_at_quantile(0.90),
        h.value_at_quantile(0.99),
        h.max()
    )
}

/// The start of a frame, for problem descriptions.
pub fn clip(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// A count with thousands separators, for tables.
pub fn thousands(n: f64) -> String {
    let rounded = n.round() as i64;
    let digits = rounded.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if rounded < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rounds to a given number of decimals for JSON output.
pub fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}
