//! A bench run's figures ([`Row`]), as a table for people or a JSON object per line.

use serde_json::{json, Value};

use super::load::Load;
use super::target::{Target, Usage};
use super::Plan;

/// One run: one server, one connection count, one idle count. The field names are the JSON
/// keys of shared/DESIGN.md.
#[derive(Debug, Clone)]
pub struct Row {
    /// The mode, or the `--against` address.
    pub mode: String,
    /// Active connections, each with one message in flight.
    pub conns: usize,
    /// Connections that only sit there.
    pub idle: usize,
    /// Bytes per message.
    pub size: usize,
    /// The measured window, seconds.
    pub secs: f64,
    /// Active connections that got at least one echo (blocking: 1).
    pub served: usize,
    /// Echoes completed in the window.
    pub msgs: u64,
    pub msgs_per_s: f64,
    /// Latency percentiles, send to whole echo, µs (absent without a message).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub max_us: Option<u64>,
    /// The server's CPU time over the window (user + system, children included).
    pub cpu_s: Option<f64>,
    pub cpu_us_per_msg: Option<f64>,
    /// Sum of the server's processes' peak resident memory.
    pub peak_rss_kb: Option<u64>,
    pub threads: Option<u64>,
    pub processes: Option<u64>,
    /// Connections refused, timed out, reset or closed by the server, or not echoed.
    pub errors: usize,
}

impl Row {
    /// The row of a run that measured `msgs` echoes in `secs`, `before` and `after` being
    /// the server's usage at the window's ends.
    pub(super) fn new(
        target: &Target,
        plan: Plan,
        secs: f64,
        msgs: u64,
        load: &Load,
        before: Option<Usage>,
        after: Option<Usage>,
    ) -> Row {
        let latency = load.latency();
        let has_latency = !latency.is_empty();
        let percentile = |q: f64| has_latency.then(|| latency.value_at_quantile(q));
        let cpu_s = match (before, after) {
            (Some(b), Some(a)) => Some((a.cpu_s - b.cpu_s).max(0.0)),
            _ => None,
        };
        Row {
            mode: target.name.clone(),
            conns: plan.conns,
            idle: plan.idle,
            size: plan.size,
            secs,
            served: load.served(),
            msgs,
            msgs_per_s: msgs as f64 / secs.max(1e-9),
            p50_us: percentile(0.5),
            p99_us: percentile(0.99),
            max_us: has_latency.then(|| latency.max()),
            cpu_s,
            cpu_us_per_msg: cpu_s.filter(|_| msgs > 0).map(|c| c * 1e6 / msgs as f64),
            peak_rss_kb: after.map(|a| a.peak_rss_kb),
            threads: after.map(|a| a.threads),
            processes: after.map(|a| a.processes),
            errors: load.failed(),
        }
    }

    /// One JSON object, DESIGN's field names in DESIGN's order; null where unknown.
    pub fn to_json(&self) -> Value {
        let round = |x: f64, places: i32| {
            let scale = 10f64.powi(places);
            (x * scale).round() / scale
        };
        json!({
            "mode": self.mode,
            "conns": self.conns,
            "idle": self.idle,
            "size": self.size,
            "secs": round(self.secs, 3),
            "served": self.served,
            "msgs": self.msgs,
            "msgs_per_s": round(self.msgs_per_s, 1),
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
            "cpu_s": self.cpu_s.map(|c| round(c, 6)),
            "cpu_us_per_msg": self.cpu_us_per_msg.map(|c| round(c, 2)),
            "peak_rss_kb": self.peak_rss_kb,
            "threads": self.threads,
            "processes": self.processes,
            "errors": self.errors,
        })
    }
}

/// The table, a blank line between servers, and what the columns mean.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "mode",
        "conns",
        "idle",
        "served",
        "msgs/s",
        "p50 µs",
        "p99 µs",
        "max µs",
        "CPU s",
        "µs CPU/msg",
        "peak RSS",
        "threads",
        "procs",
        "errors",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let dash = || "–".to_string();
        let num = |v: Option<u64>| v.map_or_else(dash, thousands);
        lines.push(vec![
            row.mode.clone(),
            thousands(row.conns as u64),
            thousands(row.idle as u64),
            format!("{}/{}", row.served, row.conns),
            thousands(row.msgs_per_s.round() as u64),
            num(row.p50_us),
            num(row.p99_us),
            num(row.max_us),
            row.cpu_s.map_or_else(dash, |c| format!("{c:.2}")),
            row.cpu_us_per_msg.map_or_else(dash, |c| format!("{c:.1}")),
            row.peak_rss_kb.map_or_else(dash, megabytes),
            num(row.threads),
            num(row.processes),
            thousands(row.errors as u64),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 1 && rows[i - 1].mode != rows[i - 2].mode {
            out.push('\n');
        }
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, &w))| {
                let pad = " ".repeat(w - cell.chars().count());
                // The mode reads left to right; numbers line up on the right.
                if c == 0 {
                    format!("{cell}{pad}")
                } else {
                    format!("{pad}{cell}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if let Some(first) = rows.first() {
        out.push_str(&format!(
            "\n{}-byte messages, one in flight per connection; each run measured over ~{:.1} s.\n",
            first.size, first.secs
        ));
        out.push_str(LEGEND);
    }
    out
}

const LEGEND: &str = "\
served: connections that got at least one echo. p50/p99/max: the time from a send to the
whole echo. CPU s: the server's user + system time in the window, all its processes;
µs CPU/msg: that divided by msgs. peak RSS: the sum of its processes' VmHWM (pages they
share, like the program's code, count in each). errors: connections refused, timed out,
reset or closed by the server, or not echoed.
";

/// 1234567 → "1,234,567".
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// kB → "12.3 MB".
fn megabytes(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, conns: usize, served: usize, msgs: u64) -> Row {
        Row {
            mode: mode.into(),
            conns,
            idle: 0,
            size: 64,
            secs: 1.0,
            served,
            msgs,
            msgs_per_s: msgs as f64,
            p50_us: (msgs > 0).then_some(20),
            p99_us: (msgs > 0).then_some(90),
            max_us: (msgs > 0).then_some(1500),
            cpu_s: Some(0.25),
            cpu_us_per_msg: (msgs > 0).then(|| 0.25e6 / msgs as f64),
            peak_rss_kb: Some(4300),
            threads: Some(2),
            processes: Some(1),
            errors: 0,
        }
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn the_table_lines_up_and_shows_a_dash_where_nothing_was_measured() {
        let rows = [row("poll", 1000, 1000, 25_000), row("blocking", 50, 0, 0)];
        let table = table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("mode "), "{table}");
        assert!(lines[1].starts_with("poll ") && lines[1].contains("1000/1000"));
        assert!(lines[1].contains("25,000") && lines[1].contains("4.2 MB"));
        assert_eq!(lines[2], "", "a blank line between servers");
        assert!(lines[3].starts_with("blocking") && lines[3].contains("0/50"));
        assert!(lines[3].contains('–'), "{}", lines[3]);
        // Every row ends where the header ends: the columns are right-aligned.
        let width = |l: &str| l.chars().count();
        assert_eq!(width(lines[1]), width(lines[0]));
        assert_eq!(width(lines[3]), width(lines[0]));
    }

    #[test]
    fn json_has_designs_fields_in_order_and_null_where_unknown() {
        let json = row("blocking", 50, 0, 0).to_json();
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 17);
        assert_eq!(keys[0], "mode");
        assert_eq!(keys[16], "errors");
        assert!(json["p50_us"].is_null() && json["cpu_us_per_msg"].is_null());
        assert_eq!(json["cpu_s"], 0.25);
    }
}
