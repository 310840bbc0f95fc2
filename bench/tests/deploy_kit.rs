//! The operations kit in `deploy/` stays true to the binaries: every metric an alert rule or
//! a dashboard panel reads is one the edge or the allocator exports, the rules are well formed
//! (and pass `promtool check rules` where promtool is installed), and the systemd units give
//! a drain the time it needs.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

/// Every metric family the binaries register: the name given to each `registry.register(`
/// in their metrics modules, under the registry's prefix. (A labelled family with no sample
/// yet is not rendered at all, so the rendered text cannot say.)
fn exported() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = BTreeSet::new();
    for (file, prefix) in
        [("allocator/src/metrics.rs", "shake_allocator_"), ("edge/src/metrics.rs", "shake_edge_")]
    {
        let source = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(source.contains(&format!("with_prefix(\"{}\")", prefix.trim_end_matches('_'))));
        for call in source.split("registry.register(").skip(1) {
            let name = call.split('"').nth(1).expect("a metric name literal");
            names.insert(format!("{prefix}{name}"));
        }
        // Registered by shake-ops for both binaries.
        assert!(source.contains("shake_ops::build::register_info(&mut registry)"), "{file}");
        names.insert(format!("{prefix}build_info"));
        names.insert(format!("{prefix}start_time_seconds"));
    }
    // The rendered text agrees where it has samples.
    let text = shake_allocator::metrics::Metrics::new().render()
        + &shake_edge::metrics::EdgeMetrics::new().render();
    for rendered in
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next())
    {
        assert!(names.contains(rendered), "{rendered} is rendered but was not found registered");
    }
    names
}

/// The `shake_...` names in a PromQL expression, as families (sample suffixes removed).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("shake_") {
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_total", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.push(family.to_owned());
        rest = &tail[end..];
    }
    names
}

fn assert_exported(exprs: &[String], file: &str) {
    let exported = exported();
    let mut seen = 0;
    for expr in exprs {
        for name in metrics_in(expr) {
            assert!(exported.contains(&name), "{file}: {name} is not exported (in `{expr}`)");
            seen += 1;
        }
    }
    assert!(seen >= exprs.len(), "{file}: every expression names a Shake metric");
}

#[test]
fn alert_rules_are_well_formed_and_read_real_metrics() {
    let path = deploy("prometheus/shake-alerts.rules.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let groups = rules["groups"].as_sequence().expect("groups");
    let mut exprs = Vec::new();
    let mut names = BTreeSet::new();
    for group in groups {
        assert!(group["name"].as_str().is_some_and(|n| !n.is_empty()));
        for rule in group["rules"].as_sequence().expect("rules") {
            let name = rule["alert"].as_str().expect("every rule is an alert with a name");
            assert!(names.insert(name.to_owned()), "alert {name} twice");
            assert!(matches!(rule["labels"]["severity"].as_str(), Some("page" | "warn")), "{name}");
            assert!(rule["annotations"]["summary"].as_str().is_some(), "{name} has a summary");
            exprs.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    // What the control room asked for, at least.
    for wanted in [
        "ShakeAllocatorLinkDown",
        "ShakeLedgerCommitSlow",
        "ShakePoolDrainedEarly",
        "ShakeEdgeRefusingHandshakes",
        "ShakeEdgeKernelDrops",
    ] {
        assert!(names.contains(wanted), "missing alert {wanted}");
    }
    assert_exported(&exprs, "shake-alerts.rules.yml");
    // promtool has the last word on the syntax (what each rule fires on: alert_rules.rs).
    let promtool = shake_testkit::scripts::promtool();
    let output = std::process::Command::new(promtool).args(["check", "rules"]).arg(&path).output();
    let output = output.unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
}

#[test]
fn the_dashboard_reads_real_metrics() {
    let text = std::fs::read_to_string(deploy("grafana/shake-fleet.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(dashboard["uid"], "shake-fleet");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    let exprs: Vec<String> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("every target has an expr").to_owned())
        .collect();
    assert_exported(&exprs, "shake-fleet.json");
}

#[test]
fn systemd_units_outlast_the_drain() {
    // The longest drain any valid configuration asks for (not the example's): a unit that
    // only outlasted the example's would be SIGKILLed mid-drain by a configuration that
    // raised it.
    let drain_ms = shake_edge::config::MAX_DRAIN_DEADLINE_MS;
    for (unit, drain_s) in
        [("shake-edge.service", drain_ms / 1000), ("shake-allocator.service", 10)]
    {
        let text = std::fs::read_to_string(deploy(&format!("systemd/{unit}"))).unwrap();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("{unit} sets {key}"))
                .trim()
                .to_owned()
        };
        verify_with_systemd(unit, &text);
        let stop_s: u64 = value("TimeoutStopSec").parse().unwrap();
        assert!(
            stop_s > drain_s + 5,
            "{unit}: TimeoutStopSec {stop_s} does not outlast a {drain_s} s drain"
        );
        assert_eq!(value("KillSignal"), "SIGTERM", "{unit}: SIGTERM is what drains");
        assert!(value("ExecStart").contains(" run --config "), "{unit}");
        // A bad configuration exits 64 and names the field: restarting it is noise.
        // systemd reads RestartPreventExitStatus only from the main process: a bad
        // configuration refused by an ExecStartPre check would be restarted all the same.
        assert!(!text.contains("\nExecStartPre="), "{unit}: the configuration is `run`'s to check");
        let no_restart = value("RestartPreventExitStatus");
        assert!(no_restart.split_whitespace().any(|s| s == "64"), "{unit}");
        // The allocator's configuration that does not replay its ledger is 65, likewise.
        if unit.contains("allocator") {
            assert!(no_restart.split_whitespace().any(|s| s == "65"), "{unit}");
        }
        assert!(value("User") == "shake", "{unit}");
    }
    // The container's run lines likewise (docker's own default is 10 s).
    let containerfile = std::fs::read_to_string(deploy("Containerfile")).unwrap();
    let timeouts: Vec<u64> = containerfile
        .split("--stop-timeout ")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().unwrap().trim_end_matches(',').parse().unwrap())
        .collect();
    assert!(!timeouts.is_empty(), "the Containerfile's run lines set --stop-timeout");
    for stop_s in timeouts {
        assert!(stop_s > drain_ms / 1000 + 5, "--stop-timeout {stop_s} does not outlast a drain");
    }
}

/// What the units and the example configuration take for granted is in the kit: the user
/// (systemd-sysusers), the socket buffers the edge asks for (sysctl), and the capability the
/// example's priority settings need (the example said the unit granted it; it did not).
#[test]
fn the_kit_provides_what_the_units_and_the_example_assume() {
    let sysusers = std::fs::read_to_string(deploy("systemd/shake.sysusers")).unwrap();
    assert!(sysusers.lines().any(|l| l.starts_with("u shake ")), "{sysusers}");
    let example =
        shake_edge::config::EdgeConfig::parse(include_str!("../../edge/shake-edge.example.toml"))
            .unwrap();
    let sysctl = std::fs::read_to_string(deploy("sysctl/90-shake-edge.conf")).unwrap();
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        let value: u64 = sysctl
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().strip_prefix('='))
            .unwrap_or_else(|| panic!("the sysctl file sets {key}"))
            .trim()
            .parse()
            .unwrap();
        assert!(value >= 2 * example.socket_buffer_bytes as u64, "{key} = {value}");
    }
    let edge_unit = std::fs::read_to_string(deploy("systemd/shake-edge.service")).unwrap();
    let example_text = include_str!("../../edge/shake-edge.example.toml");
    if example_text.contains("CAP_SYS_NICE (the systemd unit grants it)") {
        assert!(
            edge_unit
                .lines()
                .any(|l| l.starts_with("AmbientCapabilities=") && l.contains("CAP_SYS_NICE")),
            "the example says the unit grants CAP_SYS_NICE"
        );
    }
}

/// `systemd-analyze verify` on a copy of the unit whose binaries point at this build (where
/// systemd-analyze is installed): it must find nothing to say.
fn verify_with_systemd(unit: &str, text: &str) {
    let version = match std::process::Command::new("systemd-analyze").arg("--version").output() {
        Ok(version) => version,
        Err(err) => {
            eprintln!("skipped: systemd-analyze verify ({err}: not installed)");
            return;
        }
    };
    assert!(version.status.success());
    let bins = shake_testkit::processes::bin_dir(&[]);
    let dir = std::env::temp_dir().join(format!("shake-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let local = text.replace("/usr/local/bin/", &format!("{}/", bins.display()));
    let path = dir.join(unit);
    std::fs::write(&path, local).unwrap();
    let output =
        std::process::Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let said = String::from_utf8_lossy(&output.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {unit}: {said}"
    );
}

/// A mistyped flag or a bad value is a usage error, 64, in every binary (clap's own is 2, which
/// `shake-swarm` gives its thresholds and `shake-phone` a refused token, and which the units'
/// `RestartPreventExitStatus=64` would not stop); `--help` is 0.
#[test]
fn every_binary_calls_a_bad_command_line_64_and_help_0() {
    let binaries = [
        "shake-allocator",
        "shake-edge",
        "shake-swarm",
        "shake-phone",
        "shake-relay",
        "shake-bench",
    ];
    for name in binaries {
        let exe = shake_testkit::processes::bin(name);
        let run = |args: &[&str]| {
            let out = std::process::Command::new(&exe).args(args).output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (code, said) = run(&["--no-such-flag"]);
        assert_eq!(code, Some(64), "{name}: {said}");
        assert!(said.contains("--no-such-flag"), "{name} names what it refused: {said}");
        assert_eq!(run(&["--help"]).0, Some(0), "{name} --help");
    }
    // A bad value, and an argument clap cannot require (round's are global).
    let swarm = shake_testkit::processes::bin("shake-swarm");
    let out = std::process::Command::new(swarm).args(["run", "--phones", "5k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    let allocator = shake_testkit::processes::bin("shake-allocator");
    let out = std::process::Command::new(allocator).args(["round", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
}
