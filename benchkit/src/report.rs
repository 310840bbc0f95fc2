//! The output every benchmark produces: a table for people, then exactly one JSON line for
//! scripts, also written to `bench/results/<name>.json` with a description of the machine.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Map, Value, json};

/// What machine produced a figure: CPU model, cores, kernel.
pub fn machine_description() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    json!({
        "cpu": cpu,
        // Every core of the machine, not just those this process is pinned to.
        "cores": cpuinfo.lines().filter(|l| l.starts_with("processor")).count().max(1),
        "usable_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": kernel,
        "arch": std::env::consts::ARCH,
    })
}

/// Formats `rows` of (label, value) as an aligned two-column table under `title`.
pub fn table(title: &str, rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let mut out = format!("{title}\n{}\n", "-".repeat(title.len()));
    for (label, value) in rows {
        let _ = writeln!(out, "{label:<width$}  {value:>16}");
    }
    out
}

/// Prints the table and the JSON line, and writes `bench/results/<name>.json` under
/// `results_dir` (the JSON line plus the machine description).
pub fn emit(
    name: &str,
    table_text: &str,
    figures: Map<String, Value>,
    results_dir: Option<&Path>,
) -> std::io::Result<()> {
    let mut line = Map::new();
    line.insert("bench".into(), Value::from(name));
    line.extend(figures);
    let line = Value::Object(line);
    if let Some(dir) = results_dir {
        std::fs::create_dir_all(dir)?;
        let mut file = line.clone();
        file["machine"] = machine_description();
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_string_pretty(&file)? + "\n",
        )?;
    }
    println!("{table_text}");
    println!("{line}");
    Ok(())
}

/// A rate in people's units: `12.3 M/s`.
pub fn human_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.1} M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k/s", per_s / 1e3)
    } else {
        format!("{per_s:.1} /s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_labels() {
        let text = table("t", &[("a".into(), "1".into()), ("long".into(), "2".into())]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "t");
        assert_eq!(lines[2].len(), lines[3].len());
    }

    #[test]
    fn rates_in_human_units() {
        assert_eq!(human_rate(52_300_000.0), "52.3 M/s");
        assert_eq!(human_rate(1_500.0), "1.5 k/s");
        assert_eq!(human_rate(12.0), "12.0 /s");
    }

    #[test]
    fn emit_writes_the_json_file() {
        let dir = std::env::temp_dir().join(format!("shake-report-{}", std::process::id()));
        let mut figures = Map::new();
        figures.insert("x".into(), Value::from(1));
        emit("unit", "t", figures, Some(&dir)).unwrap();
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("unit.json")).unwrap()).unwrap();
        assert_eq!(written["bench"], "unit");
        assert_eq!(written["x"], 1);
        assert!(written["machine"]["cores"].as_u64().unwrap() >= 1);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
