//! RESULTS.md: the machine, the knobs, one table per scenario (medians over the repeats,
//! with icegate/coturn, icegate/floor and icegate/janus ratios), and the issues' targets.

use crate::contender::Kind;
use crate::measure::median;
use crate::scenario::{Metric, Scenario};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// What a table is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    /// One of our scenarios.
    Scenario(Scenario),
    /// coturn's turnutils_uclient as the load generator.
    Uclient,
}

impl Section {
    fn title(self) -> String {
        match self {
            Section::Scenario(s) => format!("Scenario `{}`", s.name()),
            Section::Uclient => "turnutils_uclient (coturn's load generator)".into(),
        }
    }
}

/// One run of one section against one contender.
#[derive(Debug, Clone)]
pub struct Record {
    /// What ran.
    pub section: Section,
    /// Against whom.
    pub kind: Kind,
    /// Which repetition (from 0).
    pub repeat: usize,
    /// The figures.
    pub metrics: Vec<(Metric, f64)>,
}

/// Everything around the tables.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    /// Machine description lines.
    pub machine: Vec<String>,
    /// The command that produced the report.
    pub command: String,
    /// Settings, one line each.
    pub settings: Vec<String>,
    /// Remarks (preliminary run, errors), one line each.
    pub notes: Vec<String>,
    /// Repetitions.
    pub repeats: usize,
}

/// Describes this machine: CPUs, CPU model, kernel, date, load.
pub fn machine() -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let model = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    vec![
        format!("CPUs (nproc): {nproc}"),
        format!("CPU model: {model}"),
        format!(
            "kernel: Linux {}",
            read("/proc/sys/kernel/osrelease").trim()
        ),
        format!("date: {date}"),
        format!("load average at start: {}", read("/proc/loadavg").trim()),
    ]
}

/// Median of each metric per (section, contender).
fn medians(records: &[Record]) -> BTreeMap<(Section, Kind), BTreeMap<Metric, f64>> {
    let mut all: BTreeMap<(Section, Kind), BTreeMap<Metric, Vec<f64>>> = BTreeMap::new();
    for r in records {
        let m = all.entry((r.section, r.kind)).or_default();
        for &(metric, v) in &r.metrics {
            m.entry(metric).or_default().push(v);
        }
    }
    all.into_iter()
        .map(|(k, m)| (k, m.into_iter().map(|(x, v)| (x, median(&v))).collect()))
        .collect()
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 {
        // Thousands separated by a thin space, for tables of packet rates.
        let s = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, ch) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push('\u{2009}');
            }
            out.push(ch);
        }
        if v < 0.0 {
            format!("-{out}")
        } else {
            out
        }
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && !a.is_nan() && !b.is_nan() => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// The medians table of every section, as Markdown.
pub fn tables(records: &[Record]) -> String {
    let med = medians(records);
    let sections: BTreeSet<Section> = records.iter().map(|r| r.section).collect();
    let mut out = String::new();
    for section in sections {
        let kinds: Vec<Kind> = [Kind::Icegate, Kind::Coturn, Kind::Floor, Kind::Janus]
            .into_iter()
            .filter(|k| med.contains_key(&(section, *k)))
            .collect();
        let metrics: BTreeSet<Metric> = kinds
            .iter()
            .flat_map(|k| med[&(section, *k)].keys().copied())
            .collect();
        let has = |k: Kind| kinds.contains(&k);
        let _ = writeln!(out, "### {}\n", section.title());
        let mut head = String::from("| metric |");
        let mut rule = String::from("| --- |");
        for k in &kinds {
            let _ = write!(head, " {} |", k.name());
            rule.push_str(" ---: |");
        }
        if has(Kind::Icegate) && has(Kind::Coturn) {
            head.push_str(" icegate/coturn |");
            rule.push_str(" ---: |");
        }
        if has(Kind::Icegate) && has(Kind::Floor) {
            head.push_str(" icegate/floor |");
            rule.push_str(" ---: |");
        }
        if has(Kind::Icegate) && has(Kind::Janus) {
            head.push_str(" icegate/janus |");
            rule.push_str(" ---: |");
        }
        let _ = writeln!(out, "{head}\n{rule}");
        for metric in metrics {
            let get = |k: Kind| med.get(&(section, k)).and_then(|m| m.get(&metric)).copied();
            let mut row = format!("| {} |", metric.label());
            for k in &kinds {
                let _ = write!(row, " {} |", get(*k).map_or("–".into(), fmt));
            }
            if has(Kind::Icegate) && has(Kind::Coturn) {
                let _ = write!(row, " {} |", ratio(get(Kind::Icegate), get(Kind::Coturn)));
            }
            if has(Kind::Icegate) && has(Kind::Floor) {
                let _ = write!(row, " {} |", ratio(get(Kind::Icegate), get(Kind::Floor)));
            }
            if has(Kind::Icegate) && has(Kind::Janus) {
                let _ = write!(row, " {} |", ratio(get(Kind::Icegate), get(Kind::Janus)));
            }
            let _ = writeln!(out, "{row}");
        }
        out.push('\n');
    }
    out
}

/// The targets against the medians: (target, figure, verdict).
fn targets(records: &[Record]) -> Vec<(String, String, &'static str)> {
    let med = medians(records);
    let get = |s: Scenario, k: Kind, m: Metric| {
        med.get(&(Section::Scenario(s), k))
            .and_then(|x| x.get(&m))
            .copied()
            .filter(|v| !v.is_nan())
    };
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not measured",
    };
    let ratio_check = |s, m, other, limit: f64, at_most: bool| {
        let r = get(s, Kind::Icegate, m)
            .zip(get(s, other, m))
            .map(|(a, b)| a / b);
        let ok = r.map(|r| if at_most { r <= limit } else { r >= limit });
        (r.map_or("–".into(), |r| format!("{r:.2}×")), verdict(ok))
    };
    let mut out = Vec::new();
    let calls_loss = get(Scenario::Calls, Kind::Icegate, Metric::LossPct);
    let (f, mut v) = ratio_check(
        Scenario::Calls,
        Metric::CpuPerPacket,
        Kind::Coturn,
        0.7,
        true,
    );
    if calls_loss.is_some_and(|l| l > 0.0) && v == "met" {
        v = "missed";
    }
    out.push((
        "calls: CPU µs/packet ≤ 0.7× coturn's at 0 % loss".into(),
        format!("{f}, icegate loss {} %", calls_loss.map_or("–".into(), fmt)),
        v,
    ));
    let (f, v) = ratio_check(
        Scenario::Calls,
        Metric::CpuPerPacket,
        Kind::Floor,
        1.1,
        true,
    );
    out.push(("calls: CPU µs/packet ≤ 1.1× the floor's".into(), f, v));
    let (f, v) = ratio_check(
        Scenario::Blast,
        Metric::SustainedPps,
        Kind::Coturn,
        1.5,
        false,
    );
    out.push(("blast: sustained rate ≥ 1.5× coturn's".into(), f, v));
    let (f, v) = ratio_check(
        Scenario::Allocations,
        Metric::AllocsPerSec,
        Kind::Coturn,
        10.0,
        false,
    );
    out.push(("allocations/s ≥ 10× coturn's".into(), f, v));
    let (f, v) = ratio_check(
        Scenario::Idle,
        Metric::BytesPerAlloc,
        Kind::Coturn,
        0.5,
        true,
    );
    out.push(("idle: memory per allocation ≤ 0.5× coturn's".into(), f, v));
    let held = get(Scenario::Idle, Kind::Icegate, Metric::Allocations);
    let failures = get(Scenario::Idle, Kind::Icegate, Metric::SetupFailures);
    out.push((
        "idle: 16,383 allocations per relay IP, ≥ 50,000 per host".into(),
        format!(
            "{} held, {} failed",
            held.map_or("–".into(), fmt),
            failures.map_or("–".into(), fmt)
        ),
        match held {
            Some(h) if h >= 50_000.0 => "met",
            Some(_) if failures.is_some_and(|f| f > 0.0) => "missed",
            Some(_) => "not measured at this size (see --idle, --relay-ips)",
            None => "not measured",
        },
    ));
    let p99 = get(Scenario::Blast, Kind::Icegate, Metric::HalfRateP99);
    let floor_p99 = get(Scenario::Blast, Kind::Floor, Metric::HalfRateP99);
    out.push((
        "p99 round trip ≤ floor p99 + 100 µs at the latency rate (about half the sustained rate)"
            .into(),
        format!(
            "{} µs vs {} µs",
            p99.map_or("–".into(), fmt),
            floor_p99.map_or("–".into(), fmt)
        ),
        verdict(p99.zip(floor_p99).map(|(a, b)| a <= b + 100.0)),
    ));
    // Issue 14: icegate-signal against Janus, over wss and over ws.
    for (scenario, over) in [(Scenario::Signal, "wss"), (Scenario::SignalPlain, "ws")] {
        let (f, v) = ratio_check(scenario, Metric::BytesPerSession, Kind::Janus, 0.25, true);
        out.push((
            format!("signal ({over}): RSS per idle session ≤ 0.25× Janus's"),
            f,
            v,
        ));
        let (f, v) = ratio_check(scenario, Metric::CpuPerSession, Kind::Janus, 0.5, true);
        out.push((
            format!("signal ({over}): CPU per session setup ≤ 0.5× Janus's"),
            f,
            v,
        ));
    }
    out
}

/// The whole RESULTS.md.
pub fn render(records: &[Record], info: &RunInfo) -> String {
    let mut out = String::from("# icegate-relay and icegate-signal benchmark results\n\n");
    for n in &info.notes {
        let _ = writeln!(out, "> {n}\n");
    }
    let _ = writeln!(out, "Produced by `{}`.\n", info.command);
    out.push_str("## Machine\n\n");
    for m in &info.machine {
        let _ = writeln!(out, "- {m}");
    }
    out.push_str("\n## Settings\n\n");
    for s in &info.settings {
        let _ = writeln!(out, "- {s}");
    }
    let _ = writeln!(
        out,
        "\nEvery figure is the median of {} run(s). Ratios are icegate's figure divided by \
         the other's: below 1 is better for CPU, memory and latency, above 1 for rates.\n",
        info.repeats
    );
    out.push_str(
        "## Targets (issues 5 and 14)\n\n| target | figure | verdict |\n| --- | --- | --- |\n",
    );
    for (t, f, v) in targets(records) {
        let _ = writeln!(out, "| {t} | {f} | {v} |");
    }
    out.push_str("\n## Figures\n\n");
    out.push_str(&tables(records));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_medians_and_ratios() {
        let rec = |kind, repeat, v| Record {
            section: Section::Scenario(Scenario::Calls),
            kind,
            repeat,
            metrics: vec![(Metric::CpuPerPacket, v)],
        };
        let records = vec![
            rec(Kind::Icegate, 0, 1.0),
            rec(Kind::Icegate, 1, 3.0),
            rec(Kind::Icegate, 2, 2.0),
            rec(Kind::Coturn, 0, 4.0),
            rec(Kind::Floor, 0, 1.0),
        ];
        let t = tables(&records);
        assert!(
            t.contains("| server CPU µs/packet | 2.000 | 4.000 | 1.000 | 0.50 | 2.00 |"),
            "{t}"
        );
        let all = render(&records, &RunInfo::default());
        assert!(all.contains("calls: CPU µs/packet ≤ 0.7× coturn's at 0 % loss | 0.50×"));
        assert_eq!(fmt(1234567.0), "1\u{2009}234\u{2009}567");
    }
}
