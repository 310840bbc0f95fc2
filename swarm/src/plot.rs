//! `--plot FILE.svg`: rates and p99 latency over time, as a small self-contained SVG.
//!
//! Written directly rather than with plotters: plotters lays out text through a font backend
//! (system fonts via font-kit, or a font file shipped beside the binary), which a bare machine
//! with only the Rust toolchain does not have; an SVG names a generic font and lets the viewer
//! draw the text.

use std::fmt::Write as _;

use super::report::TimePoint;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 220.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

/// One line on a panel: name, colour, points (t, value).
#[derive(Debug, Clone)]
pub struct Line<'a> {
    /// Legend.
    pub name: &'a str,
    /// SVG colour.
    pub colour: &'a str,
    /// (seconds from the start of the plot, value).
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title, a unit for its axis, its lines.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    /// Title above it.
    pub title: &'a str,
    /// Unit of its values.
    pub unit: &'a str,
    /// Its lines.
    pub lines: Vec<Line<'a>>,
}

/// An SVG of `panels` stacked, over `t_max` seconds (`x_label` under the time axis), with a
/// dashed line across every panel at each time in `marks`.
pub fn panels_svg(panels: &[Panel<'_>], t_max: f64, x_label: &str, marks: &[f64]) -> String {
    let height = TOP + panels.len() as f64 * (PANEL + GAP) + 20.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (i, p) in panels.iter().enumerate() {
        panel(&mut out, TOP + i as f64 * (PANEL + GAP), p.title, p.unit, t_max, &p.lines);
    }
    let plot_w = WIDTH - LEFT - RIGHT;
    for t in marks {
        let x = LEFT + t / t_max.max(1e-9) * plot_w;
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="#444" stroke-dasharray="4 3"/>"##,
            height - 30.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="end">{x_label}</text></svg>"#,
        WIDTH - RIGHT,
        height - 10.0
    );
    out
}

fn panel(out: &mut String, top: f64, title: &str, unit: &str, t_max: f64, lines: &[Line<'_>]) {
    let y_max =
        lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)).fold(0.0f64, f64::max).max(1e-9)
            * 1.1;
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: f64| LEFT + t / t_max.max(1e-9) * plot_w;
    let y = |v: f64| top + PANEL - v / y_max * PANEL;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{}" font-size="14" font-weight="bold">{title}</text>"#,
        top - 10.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#888"/>"##
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{v:.1} {unit}</text><line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#eee"/>"##,
            LEFT - 6.0,
            y(v) + 4.0,
            WIDTH - RIGHT,
            y(v),
            y(v)
        );
    }
    for (i, line) in lines.iter().enumerate() {
        let points: Vec<String> =
            line.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#,
            line.colour,
            points.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="12" fill="{}">{}</text>"#,
            WIDTH - RIGHT - 180.0,
            top + 16.0 + 16.0 * i as f64,
            line.colour,
            line.name
        );
    }
}

/// The SVG for a run's time series.
pub fn svg(series: &[TimePoint]) -> String {
    let t_max = series.last().map_or(1.0, |p| p.t_s);
    let mut sent = Vec::new();
    let mut answered = Vec::new();
    let mut prev: Option<&TimePoint> = None;
    for p in series {
        if let Some(q) = prev {
            let dt = (p.t_s - q.t_s).max(1e-6);
            sent.push((p.t_s, p.sent.saturating_sub(q.sent) as f64 / dt));
            answered.push((p.t_s, p.outcomes.saturating_sub(q.outcomes) as f64 / dt));
        }
        prev = Some(p);
    }
    let p99: Vec<(f64, f64)> = series.iter().map(|p| (p.t_s, p.p99_outcome_ms)).collect();
    let panels = [
        Panel {
            title: "shakes per second",
            unit: "/s",
            lines: vec![
                Line { name: "sent", colour: "#1f77b4", points: sent },
                Line { name: "answered", colour: "#2ca02c", points: answered },
            ],
        },
        Panel {
            title: "p99 shake to outcome, per second (coordinated omission corrected)",
            unit: "ms",
            lines: vec![Line { name: "p99", colour: "#d62728", points: p99 }],
        },
    ];
    panels_svg(&panels, t_max, &format!("{t_max:.0} s"), &[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_svg_has_both_panels_and_every_point() {
        let series: Vec<TimePoint> = (1..=10u32)
            .map(|i| TimePoint {
                t_s: f64::from(i),
                connected: 5,
                sent: u64::from(i) * 100,
                outcomes: u64::from(i) * 90,
                awards: 0,
                p99_outcome_ms: f64::from(i) / 2.0,
            })
            .collect();
        let svg = svg(&series);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        // Nine rate points (differences) per rate line, ten latency points.
        let counts: Vec<usize> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| l.split("points=\"").nth(1).unwrap().split(' ').count())
            .collect();
        assert_eq!(counts, vec![9, 9, 10]);
        assert!(svg.contains("shakes per second"));
    }
}
