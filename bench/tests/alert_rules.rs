//! What each alert rule of `deploy/prometheus/shake-alerts.rules.yml` fires on, and what it
//! does not, evaluated by Prometheus's own rule engine (`promtool test rules`, promtool from
//! `scripts/promtool.sh`). The unit test file is written here from the cases below, each
//! expected alert with the rule's own annotations rendered for its labels, so the cases say
//! only what an operator cares about: which series page, and which do not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// One evaluation of one rule over series of its own.
struct Case {
    alert: &'static str,
    /// (series, values in promtool's notation), a sample every 15 s.
    series: &'static [(&'static str, &'static str)],
    /// When the rule is evaluated, from the first sample.
    at: &'static str,
    /// The alerts that fire then: their labels (beside the rule's), and `{{ $value }}` as the
    /// annotations render it ("-" where no annotation shows it). Empty: the series must fire
    /// nothing.
    firing: &'static [(&'static [(&'static str, &'static str)], &'static str)],
}

const CASES: &[Case] = &[
    Case {
        alert: "ShakeAllocatorLinkDown",
        series: &[
            (r#"shake_edge_allocator_up{instance="edge-1"}"#, "0x8"),
            (r#"shake_edge_allocator_up{instance="edge-2"}"#, "1x8"),
        ],
        at: "1m",
        firing: &[(&[("instance", "edge-1")], "-")],
    },
    Case {
        alert: "ShakeAllocatorRefusesEdge",
        series: &[
            (
                r#"shake_edge_allocator_streams_refused_total{instance="edge-1",code="DUPLICATE_WORKER"}"#,
                "0 0 1 1 1 1",
            ),
            // Refused before these samples, none since: no increase, nothing to page about.
            (
                r#"shake_edge_allocator_streams_refused_total{instance="edge-2",code="UNSUPPORTED_VERSION"}"#,
                "3x5",
            ),
        ],
        at: "1m",
        firing: &[(&[("instance", "edge-1"), ("code", "DUPLICATE_WORKER")], "-")],
    },
    Case {
        alert: "ShakeClockSkew",
        series: &[
            (r#"shake_edge_allocator_clock_ahead_ms{instance="edge-1"}"#, "-400x20"),
            (r#"shake_edge_allocator_clock_ahead_ms{instance="edge-2"}"#, "100x20"),
        ],
        at: "3m",
        firing: &[(&[("instance", "edge-1")], "400")],
    },
    Case {
        alert: "ShakeAllocatorsAbsent",
        series: &[(r#"shake_edge_build_info{instance="edge-1"}"#, "1x10")],
        at: "2m",
        firing: &[(&[], "-")],
    },
    Case {
        alert: "ShakeAllocatorsAbsent",
        series: &[(r#"shake_allocator_build_info{instance="a"}"#, "1x10")],
        at: "2m",
        firing: &[],
    },
    Case {
        alert: "ShakeEdgesAbsent",
        series: &[(r#"shake_allocator_build_info{instance="a"}"#, "1x10")],
        at: "2m",
        firing: &[(&[], "-")],
    },
    Case {
        alert: "ShakeEdgesAbsent",
        series: &[(r#"shake_edge_build_info{instance="edge-1"}"#, "1x10")],
        at: "2m",
        firing: &[],
    },
    Case {
        alert: "ShakeNoAllocatorLeads",
        series: &[
            (r#"shake_allocator_leader_epoch{instance="a"}"#, "0x8"),
            (r#"shake_allocator_leader_epoch{instance="b"}"#, "0x8"),
        ],
        at: "1m",
        firing: &[(&[], "-")],
    },
    Case {
        alert: "ShakeNoAllocatorLeads",
        series: &[
            (r#"shake_allocator_leader_epoch{instance="a"}"#, "0x8"),
            (r#"shake_allocator_leader_epoch{instance="b"}"#, "3x8"),
        ],
        at: "1m",
        firing: &[],
    },
    Case {
        alert: "ShakeLedgerCommitSlow",
        series: &[
            // a: every commit between 50 and 100 ms; b: every one under 10 ms.
            (r#"shake_allocator_commit_seconds_bucket{instance="a",le="0.05"}"#, "0x40"),
            (r#"shake_allocator_commit_seconds_bucket{instance="a",le="0.1"}"#, "0+100x40"),
            (r#"shake_allocator_commit_seconds_bucket{instance="a",le="+Inf"}"#, "0+100x40"),
            (r#"shake_allocator_commit_seconds_bucket{instance="b",le="0.01"}"#, "0+100x40"),
            (r#"shake_allocator_commit_seconds_bucket{instance="b",le="0.05"}"#, "0+100x40"),
            (r#"shake_allocator_commit_seconds_bucket{instance="b",le="+Inf"}"#, "0+100x40"),
        ],
        at: "5m",
        firing: &[(&[("instance", "a")], "-")],
    },
    Case {
        alert: "ShakeLedgerCommitStuck",
        series: &[
            (r#"shake_allocator_commit_oldest_seconds{instance="a"}"#, "0 0 6 7 8 9 10 11 12"),
            (r#"shake_allocator_commit_oldest_seconds{instance="b"}"#, "1x8"),
        ],
        at: "1m30s",
        firing: &[(&[("instance", "a")], "-")],
    },
    Case {
        alert: "ShakeLedgerCallsUnanswered",
        series: &[
            (r#"shake_allocator_ledger_calls_unanswered{instance="a"}"#, "2x10"),
            (r#"shake_allocator_ledger_calls_unanswered{instance="b"}"#, "0x10"),
        ],
        at: "2m",
        firing: &[(&[("instance", "a")], "-")],
    },
    Case {
        alert: "ShakeAllocatorKernelDrops",
        series: &[
            (r#"shake_allocator_kernel_drops_total{instance="a"}"#, "0+5x20"),
            (r#"shake_allocator_kernel_drops_total{instance="b"}"#, "7x20"),
        ],
        at: "3m",
        firing: &[(&[("instance", "a")], "-")],
    },
    Case {
        alert: "ShakeLedgerNotWritable",
        series: &[
            (r#"shake_allocator_leadership_total{instance="a",outcome="failed"}"#, "0 0 1 1 1"),
            (r#"shake_allocator_leadership_total{instance="a",outcome="won"}"#, "0 1 1 1 1"),
            (r#"shake_allocator_leadership_total{instance="b",outcome="failed"}"#, "2x4"),
        ],
        at: "1m",
        firing: &[(&[("instance", "a"), ("outcome", "failed")], "-")],
    },
    Case {
        alert: "ShakePoolDrainedEarly",
        series: &[
            // Round 1 drained while open, round 2 drained and closed; shakes arrive.
            (r#"shake_allocator_pool_remaining{instance="a",round="1"}"#, "0x12"),
            (r#"shake_allocator_round_open{instance="a",round="1"}"#, "1x12"),
            (r#"shake_allocator_pool_remaining{instance="a",round="2"}"#, "0x12"),
            (r#"shake_allocator_round_open{instance="a",round="2"}"#, "0x12"),
            (r#"shake_allocator_entries_total{instance="a"}"#, "0+50x12"),
        ],
        at: "2m30s",
        firing: &[(&[("instance", "a"), ("round", "1")], "-")],
    },
    Case {
        alert: "ShakePoolDrainedEarly",
        series: &[
            // Drained while open, but no shake arrives: nobody is turned away.
            (r#"shake_allocator_pool_remaining{instance="a",round="1"}"#, "0x12"),
            (r#"shake_allocator_round_open{instance="a",round="1"}"#, "1x12"),
            (r#"shake_allocator_entries_total{instance="a"}"#, "80x12"),
        ],
        at: "2m30s",
        firing: &[],
    },
    Case {
        alert: "ShakeEdgeRefusingHandshakes",
        series: &[
            (r#"shake_edge_handshakes_total{instance="edge-1",outcome="overloaded"}"#, "0+10x20"),
            (r#"shake_edge_handshakes_total{instance="edge-1",outcome="accepted"}"#, "0+100x20"),
            (r#"shake_edge_handshakes_total{instance="edge-2",outcome="accepted"}"#, "0+100x20"),
            (r#"shake_edge_handshakes_total{instance="edge-2",outcome="overloaded"}"#, "4x20"),
        ],
        at: "3m",
        firing: &[(&[("instance", "edge-1")], "-")],
    },
    Case {
        alert: "ShakeEdgeKernelDrops",
        series: &[
            (r#"shake_edge_kernel_drops_total{instance="edge-1"}"#, "0+30x20"),
            (r#"shake_edge_kernel_drops_total{instance="edge-2"}"#, "9x20"),
        ],
        at: "3m",
        firing: &[(&[("instance", "edge-1")], "-")],
    },
    Case {
        alert: "ShakeProcessRestarting",
        series: &[
            // a: started three times in 3 minutes; edge-1: restarted once (an upgrade).
            (r#"shake_allocator_start_time_seconds{instance="a"}"#, "1000x4 1060x4 1120x4"),
            (r#"shake_edge_start_time_seconds{instance="edge-1"}"#, "900x4 1080x8"),
            (r#"shake_edge_start_time_seconds{instance="edge-2"}"#, "900 960 1020 1080x8"),
        ],
        at: "3m",
        firing: &[(&[("instance", "a")], "2"), (&[("instance", "edge-2")], "3")],
    },
    Case {
        alert: "ShakeEdgeTurningPhonesAway",
        series: &[
            (r#"shake_edge_handshakes_total{instance="edge-1",outcome="refused"}"#, "0+10x40"),
            (r#"shake_edge_handshakes_total{instance="edge-2",outcome="refused"}"#, "7x40"),
            (r#"shake_edge_handshakes_total{instance="edge-2",outcome="accepted"}"#, "0+10x40"),
        ],
        at: "8m",
        firing: &[(&[("instance", "edge-1")], "-")],
    },
    Case {
        alert: "ShakeAllocatorRejectsPeers",
        series: &[
            // a: an edge naming another edge_id, b: an edge failing mutual TLS, d: attempts
            // refused at the handshake caps, every few seconds for 12 minutes; c: handshakes
            // cut short by one failover, then none.
            (r#"shake_allocator_rejected_peers_total{instance="a",reason="edge_id"}"#, "0+1x48"),
            (r#"shake_allocator_rejected_peers_total{instance="d",reason="busy"}"#, "0+3x48"),
            (r#"shake_allocator_rejected_peers_total{instance="a",reason="handshake"}"#, "0x48"),
            (r#"shake_allocator_rejected_peers_total{instance="b",reason="handshake"}"#, "0+2x48"),
            (
                r#"shake_allocator_rejected_peers_total{instance="c",reason="handshake"}"#,
                "0 6 6x46",
            ),
        ],
        at: "12m",
        firing: &[
            (&[("instance", "a"), ("reason", "edge_id")], "-"),
            (&[("instance", "b"), ("reason", "handshake")], "-"),
            (&[("instance", "d"), ("reason", "busy")], "-"),
        ],
    },
    // What must not page: a condition younger than the rule's `for:`, an event older than its
    // window, a healthy fleet.
    Case {
        alert: "ShakeProcessRestarting",
        // One restart, and two restarts more than 10 minutes apart.
        series: &[
            (r#"shake_allocator_start_time_seconds{instance="a"}"#, "1000x30 1450x30"),
            (r#"shake_edge_start_time_seconds{instance="edge-1"}"#, "900x4 960x44 1700x4"),
        ],
        at: "13m",
        firing: &[],
    },
    Case {
        alert: "ShakeEdgeTurningPhonesAway",
        // A drain: refusals for a minute, then the edge is gone.
        series: &[(
            r#"shake_edge_handshakes_total{instance="edge-1",outcome="refused"}"#,
            "0 50 100 150 200 200x40",
        )],
        // Past 5 min from its first refusal: a 5 min window would fire here.
        at: "5m30s",
        firing: &[],
    },
    Case {
        alert: "ShakeAllocatorRejectsPeers",
        // A standby refusing edges is doing its job; a failed handshake younger than `for:`.
        series: &[
            (r#"shake_allocator_rejected_peers_total{instance="b",reason="not_leader"}"#, "0+5x48"),
            (
                r#"shake_allocator_rejected_peers_total{instance="c",reason="handshake"}"#,
                "0x20 1x28",
            ),
        ],
        at: "8m",
        firing: &[],
    },
    Case {
        alert: "ShakeEdgeTurningPhonesAway",
        // A drain's refusals, while they last: younger than the rule's `for:`.
        series: &[(
            r#"shake_edge_handshakes_total{instance="edge-1",outcome="refused"}"#,
            "0 50 100 150 200 200x40",
        )],
        at: "1m30s",
        firing: &[],
    },
    Case {
        alert: "ShakeProcessRestarting",
        // (This one pages.) Two restarts 9 minutes apart are within the 10 minute window.
        series: &[(r#"shake_allocator_start_time_seconds{instance="c"}"#, "1000x4 1060x36 1600x4")],
        at: "10m30s",
        firing: &[(&[("instance", "c")], "2")],
    },
    Case {
        alert: "ShakeAllocatorLinkDown",
        series: &[(r#"shake_edge_allocator_up{instance="edge-1"}"#, "1 1 1 0 0 0 0 0")],
        at: "1m",
        firing: &[],
    },
    Case {
        alert: "ShakeAllocatorRefusesEdge",
        series: &[(
            r#"shake_edge_allocator_streams_refused_total{instance="edge-1",code="DUPLICATE_WORKER"}"#,
            "0 1 1x40",
        )],
        at: "7m",
        firing: &[],
    },
    Case {
        alert: "ShakeClockSkew",
        series: &[(r#"shake_edge_allocator_clock_ahead_ms{instance="edge-1"}"#, "0x8 -400x8")],
        at: "3m",
        firing: &[],
    },
    Case {
        alert: "ShakeNoAllocatorLeads",
        series: &[(r#"shake_allocator_leader_epoch{instance="a"}"#, "3 3 3 3 0 0")],
        at: "1m",
        firing: &[],
    },
    Case {
        alert: "ShakeLedgerCommitSlow",
        series: &[
            (r#"shake_allocator_commit_seconds_bucket{instance="b",le="0.01"}"#, "0+100x40"),
            (r#"shake_allocator_commit_seconds_bucket{instance="b",le="+Inf"}"#, "0+100x40"),
        ],
        at: "5m",
        firing: &[],
    },
    Case {
        alert: "ShakeLedgerCommitStuck",
        series: &[(r#"shake_allocator_commit_oldest_seconds{instance="a"}"#, "0 0 0 6 7")],
        at: "1m",
        firing: &[],
    },
    Case {
        alert: "ShakeLedgerCallsUnanswered",
        series: &[(r#"shake_allocator_ledger_calls_unanswered{instance="a"}"#, "0 0 2 2 2")],
        at: "1m",
        firing: &[],
    },
    Case {
        alert: "ShakeAllocatorKernelDrops",
        series: &[(r#"shake_allocator_kernel_drops_total{instance="a"}"#, "0x8 5 10 15")],
        at: "2m45s",
        firing: &[],
    },
    Case {
        alert: "ShakeLedgerNotWritable",
        series: &[(
            r#"shake_allocator_leadership_total{instance="a",outcome="failed"}"#,
            "0 1 1x40",
        )],
        at: "7m",
        firing: &[],
    },
    Case {
        alert: "ShakePoolDrainedEarly",
        series: &[
            (r#"shake_allocator_pool_remaining{instance="a",round="1"}"#, "5x6 0x6"),
            (r#"shake_allocator_round_open{instance="a",round="1"}"#, "1x12"),
            (r#"shake_allocator_entries_total{instance="a"}"#, "0+50x12"),
        ],
        at: "2m15s",
        firing: &[],
    },
    Case {
        alert: "ShakeEdgeRefusingHandshakes",
        series: &[(
            r#"shake_edge_handshakes_total{instance="edge-1",outcome="overloaded"}"#,
            "0x8 10 20 30",
        )],
        at: "2m45s",
        firing: &[],
    },
    Case {
        alert: "ShakeEdgeKernelDrops",
        series: &[(r#"shake_edge_kernel_drops_total{instance="edge-1"}"#, "0x8 30 60 90")],
        at: "2m45s",
        firing: &[],
    },
];

/// The rules file's alerts: each one's own labels and annotation templates.
struct Rule {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/shake-alerts.rules.yml")
}

fn rules() -> BTreeMap<String, Rule> {
    let text = std::fs::read_to_string(rules_file()).unwrap();
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let strings = |value: &serde_yaml::Value| -> BTreeMap<String, String> {
        serde_yaml::from_value(value.clone()).unwrap_or_default()
    };
    let mut rules = BTreeMap::new();
    for group in yaml["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap().to_owned();
            let rule = Rule {
                labels: strings(&rule["labels"]),
                annotations: strings(&rule["annotations"]),
            };
            rules.insert(name, rule);
        }
    }
    rules
}

/// `template` rendered as Prometheus renders an annotation, for the forms the rules use.
fn render(template: &str, labels: &[(&str, &str)], value: &str) -> String {
    assert!(value != "-" || !template.contains("{{ $value }}"), "give the value: {template}");
    let mut text = template.replace("{{ $value }}", value);
    for (name, label) in labels {
        text = text.replace(&format!("{{{{ $labels.{name} }}}}"), label);
    }
    assert!(!text.contains("{{"), "a template form this test does not render: {template}");
    text
}

/// promtool's unit test file for `cases`: one test group per case.
fn unit_tests(rules: &BTreeMap<String, Rule>, cases: &[Case]) -> Value {
    let groups: Vec<Value> = cases
        .iter()
        .map(|case| {
            let rule = rules.get(case.alert).unwrap_or_else(|| panic!("no rule {}", case.alert));
            let expected: Vec<Value> = case
                .firing
                .iter()
                .map(|(labels, value)| {
                    let mut all: BTreeMap<&str, &str> = labels.iter().copied().collect();
                    all.extend(rule.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                    let annotations: BTreeMap<&str, String> = rule
                        .annotations
                        .iter()
                        .map(|(name, template)| (name.as_str(), render(template, labels, value)))
                        .collect();
                    json!({ "exp_labels": all, "exp_annotations": annotations })
                })
                .collect();
            let series: Vec<Value> = case
                .series
                .iter()
                .map(|(series, values)| json!({ "series": series, "values": values }))
                .collect();
            json!({
                "name": format!("{} at {}", case.alert, case.at),
                "interval": "15s",
                "input_series": series,
                "alert_rule_test": [{
                    "eval_time": case.at,
                    "alertname": case.alert,
                    "exp_alerts": expected,
                }],
            })
        })
        .collect();
    json!({
        "rule_files": [rules_file().display().to_string()],
        "evaluation_interval": "15s",
        "tests": groups,
    })
}

/// Runs `cases` through `promtool test rules`: its success and what it said.
fn promtool_test(cases: &[Case], name: &str) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("shake-alert-tests-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("shake-alerts.tests.yml");
    let yaml = serde_yaml::to_string(&unit_tests(&rules(), cases)).unwrap();
    std::fs::write(&file, yaml).unwrap();
    let output = std::process::Command::new(shake_testkit::scripts::promtool())
        .args(["test", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout) + String::from_utf8_lossy(&output.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    (output.status.success(), said.into_owned())
}

#[test]
fn each_alert_fires_on_what_it_names_and_not_otherwise() {
    for alert in rules().keys() {
        let cases = || CASES.iter().filter(|case| case.alert == alert);
        assert!(cases().any(|case| !case.firing.is_empty()), "no case makes {alert} fire");
        assert!(cases().any(|case| case.firing.is_empty()), "no case leaves {alert} quiet");
    }
    let (passed, said) = promtool_test(CASES, "all");
    assert!(passed, "{said}");
}

/// The cases can fail: an alert that fires where a case says nothing may (here the drained
/// round that has closed) is reported.
#[test]
fn a_case_that_expects_the_wrong_alerts_fails() {
    let wrong = [Case {
        alert: "ShakePoolDrainedEarly",
        series: CASES.iter().find(|c| c.alert == "ShakePoolDrainedEarly").unwrap().series,
        at: "2m30s",
        firing: &[(&[("instance", "a"), ("round", "2")], "-")],
    }];
    let (passed, said) = promtool_test(&wrong, "wrong");
    assert!(!passed, "promtool passed a case it should fail:\n{said}");
    assert!(said.contains("ShakePoolDrainedEarly"), "{said}");
}
