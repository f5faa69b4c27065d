//! docs/monitoring/: the alert rules and the Grafana dashboard query only metrics that a live
//! icegate-relay and icegate-signal really export, and promtool accepts the Prometheus
//! configuration, the rules and their unit tests (docs/monitoring/alerts_test.yml).
#![deny(unsafe_code)]

use icegate_tests::signal::{eventually, Received, Signal, SignalConfig};
use icegate_tests::{have_tool, workspace_root, Relay, RelayConfig, ServerKind};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn monitoring_dir() -> PathBuf {
    workspace_root().join("docs").join("monitoring")
}

fn read(file: &str) -> String {
    let path = monitoring_dir().join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Series Prometheus itself adds for every target, not exported by the daemons.
const SYNTHETIC: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

// ------------------------------------------------------------------------------------------
// PromQL: the metric names an expression selects.

/// Aggregation operators of PromQL: followed by `(` or by `by`/`without`.
#[rustfmt::skip]
const AGGREGATIONS: &[&str] = &[
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk",
    "topk", "quantile",
];

/// Functions of PromQL (Prometheus 2.x), and `start`/`end` of the `@` modifier.
#[rustfmt::skip]
const FUNCTIONS: &[&str] = &[
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "day_of_year", "days_in_month", "delta", "deriv", "exp",
    "floor", "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate",
    "label_join", "label_replace", "ln", "log2", "log10", "minute", "month",
    "predict_linear", "rate", "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt",
    "time", "timestamp", "vector", "year", "avg_over_time", "min_over_time", "max_over_time",
    "sum_over_time", "count_over_time", "quantile_over_time", "stddev_over_time",
    "stdvar_over_time", "last_over_time", "present_over_time", "acos", "acosh", "asin",
    "asinh", "atan", "atanh", "cos", "cosh", "sin", "sinh", "tan", "tanh", "deg", "rad", "pi",
    "start", "end",
];

/// Keywords followed by a parenthesised list of label names.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other keywords.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

/// Replaces every string literal (`"..."`, `'...'`, `` `...` ``) with `""`.
fn strip_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        if c == '"' || c == '\'' || c == '`' {
            let quote = c;
            while let Some(c) = chars.next() {
                if c == '\\' && quote != '`' {
                    chars.next();
                } else if c == quote {
                    break;
                }
            }
            out.push_str("\"\"");
        } else {
            out.push(c);
        }
    }
    out
}

/// Replaces the text between `open` and `close` (both included) with a space.
fn strip_between(expr: &str, open: char, close: char) -> Result<String, String> {
    let mut out = String::with_capacity(expr.len());
    let mut depth = 0usize;
    for c in expr.chars() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth
                .checked_sub(1)
                .ok_or_else(|| format!("unbalanced {close:?}"))?;
            out.push(' ');
        } else if depth == 0 {
            out.push(c);
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced {open:?}"));
    }
    Ok(out)
}

/// The metric names selected by a PromQL expression, or why it cannot be read. Grafana
/// variables (`$relay`, `${datasource}`, `$__rate_interval`) are allowed where PromQL has a
/// string, a duration or a label list.
pub fn metric_names(expr: &str) -> Result<BTreeSet<String>, String> {
    // Strings (label values, e.g. "$relay") and label matchers, then ranges and subqueries.
    let text = strip_strings(expr);
    let text = strip_between(&text, '{', '}')?;
    let text = strip_between(&text, '[', ']')?;
    let chars: Vec<char> = text.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let next_non_space = |from: usize| chars[from..].iter().copied().find(|c| !c.is_whitespace());
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (`0.8`, `1e3`, `5m`): digits, letters, dots, signs of
            // an exponent.
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric()
                    || chars[i] == '.'
                    || (matches!(chars[i], '+' | '-') && matches!(chars[i - 1], 'e' | 'E')))
            {
                i += 1;
            }
            continue;
        }
        if c == '$' {
            return Err(format!(
                "Grafana variable outside a string, range or label list at {:?}",
                chars[i..].iter().collect::<String>()
            ));
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | ':'))
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let lower = word.to_ascii_lowercase();
        let followed_by_paren = next_non_space(i) == Some('(');
        let rest: String = chars[i..].iter().collect();
        let rest = rest.trim_start();
        let grouped = ["by", "without"].iter().any(|k| {
            rest.strip_prefix(k)
                .is_some_and(|r| r.trim_start().starts_with('('))
        });
        if AGGREGATIONS.contains(&lower.as_str()) && (followed_by_paren || grouped) {
            // `sum (...)`, `sum by (label) (...)`: the operator, not a metric.
        } else if LABEL_LISTS.contains(&lower.as_str()) {
            // Skip `(label, ...)`, which group_left/group_right may also omit.
            if followed_by_paren {
                let open = i + chars[i..].iter().position(|&c| c == '(').unwrap();
                let close = open
                    + chars[open..]
                        .iter()
                        .position(|&c| c == ')')
                        .ok_or_else(|| format!("unclosed label list after {word}"))?;
                i = close + 1;
            }
        } else if followed_by_paren {
            if !FUNCTIONS.contains(&lower.as_str()) {
                return Err(format!("unknown PromQL function {word:?}"));
            }
        } else if !KEYWORDS.contains(&lower.as_str()) {
            names.insert(word);
        }
    }
    Ok(names)
}

// ------------------------------------------------------------------------------------------
// The rule file (the subset of YAML it is written in) and the dashboard.

/// The rules of a Prometheus rule file: (name, expr) for each `- alert:` or `- record:`.
/// Reads `expr:` as an inline value (optionally quoted) or a `|`/`>` block scalar; fails
/// on anything else rather than skipping it.
fn rules(yaml: &str) -> Result<Vec<(String, bool, String)>, String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut rules: Vec<(String, bool, String)> = Vec::new();
    let mut i = 0;
    let mut pending: Option<(String, bool)> = None;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        i += 1;
        if let Some(name) = trimmed
            .strip_prefix("- alert:")
            .map(|n| (n, false))
            .or_else(|| trimmed.strip_prefix("- record:").map(|n| (n, true)))
        {
            if let Some((prev, _)) = pending.take() {
                return Err(format!("rule {prev} has no expr"));
            }
            pending = Some((name.0.trim().to_string(), name.1));
        } else if let Some(value) = trimmed.strip_prefix("expr:") {
            let (name, record) = pending
                .take()
                .ok_or_else(|| format!("line {i}: expr outside a rule"))?;
            let value = value.trim();
            let expr = if value.starts_with('|') || value.starts_with('>') {
                let mut block = String::new();
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    block.push_str(lines[i].trim());
                    block.push('\n');
                    i += 1;
                }
                block
            } else if let Some(inner) = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            {
                inner.replace("\\\"", "\"").replace("''", "'")
            } else {
                value.to_string()
            };
            if expr.trim().is_empty() {
                return Err(format!("rule {name}: empty expr"));
            }
            rules.push((name, record, expr));
        }
    }
    if let Some((name, _)) = pending {
        return Err(format!("rule {name} has no expr"));
    }
    Ok(rules)
}

/// Every PromQL expression of the dashboard: the panels' (and nested rows') target `expr`s,
/// and the queries of its query variables (`label_values(SELECTOR, LABEL)`).
fn dashboard_exprs(dashboard: &Value) -> Result<Vec<(String, String)>, String> {
    fn walk(value: &Value, place: &str, out: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                let here = map
                    .get("title")
                    .and_then(Value::as_str)
                    .map(|t| format!("panel {t:?}"))
                    .unwrap_or_else(|| place.to_string());
                if let Some(Value::String(expr)) = map.get("expr") {
                    out.push((here.clone(), expr.clone()));
                }
                for (key, v) in map {
                    if key != "templating" {
                        walk(v, &here, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, place, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, "dashboard", &mut out);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .ok_or("dashboard has no templating.list")?;
    for var in variables.iter().filter(|v| v["type"] == "query") {
        let name = var["name"].as_str().unwrap_or("?");
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .ok_or_else(|| format!("variable {name}: no query"))?;
        let selector = query
            .trim()
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _label)| selector)
            .ok_or_else(|| {
                format!("variable {name}: {query:?} is not label_values(SELECTOR, LABEL)")
            })?;
        out.push((format!("variable ${name}"), selector.to_string()));
    }
    Ok(out)
}

/// `(where, name)` for every selected name that is neither in `live` nor synthetic nor
/// recorded by a rule.
fn unknown_names(
    exprs: &[(String, String)],
    live: &BTreeSet<String>,
    recorded: &BTreeSet<String>,
) -> Result<Vec<String>, String> {
    let mut missing = Vec::new();
    for (place, expr) in exprs {
        let names = metric_names(expr).map_err(|e| format!("{place}: {e} in {expr:?}"))?;
        if names.is_empty() {
            return Err(format!("{place}: selects no metric: {expr:?}"));
        }
        for name in names {
            if !live.contains(&name)
                && !recorded.contains(&name)
                && !SYNTHETIC.contains(&name.as_str())
            {
                missing.push(format!("{place}: {name}"));
            }
        }
    }
    Ok(missing)
}

/// Words of `text` that look like icegate metric names (`icegate_relay_*`,
/// `icegate_signal_*`).
fn mentioned_metrics(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("icegate_relay_") || w.starts_with("icegate_signal_"))
        .map(str::to_string)
        .collect()
}

/// The `job="..."` values the expressions select on.
fn selected_jobs(exprs: &[(String, String)]) -> BTreeSet<String> {
    let mut jobs = BTreeSet::new();
    for (_, expr) in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("job=\"") {
            rest = &rest[at + 5..];
            if let Some(end) = rest.find('"') {
                jobs.insert(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    jobs
}

// ------------------------------------------------------------------------------------------
// Live servers.

/// Starts a relay and a signal server, makes the traffic after which the series created on
/// first use exist, and returns the metric names of both scrapes.
fn live_metric_names() -> BTreeSet<String> {
    let relay = Relay::start(ServerKind::Icegate, RelayConfig::default());
    // Held to the end, so the allocation is open while both are scraped.
    let _client = relay.first_traffic();

    let signal = Signal::start(SignalConfig {
        args: ["--max-connections-per-ip", "2", "--max-message-rate", "5"]
            .map(String::from)
            .to_vec(),
        ..SignalConfig::default()
    });
    let mut alice = signal.connect("name=alice");
    alice.expect("welcome");
    // An `error` message (icegate_signal_errors_total{code}).
    alice.send(json!({"v":1,"type":"call","id":1,"to":{"user":"nobody"},"sdp":"v=0"}));
    alice.expect_error("unknown_user");
    // A refused upgrade (icegate_signal_connections_refused_total{reason}).
    let mut bob = signal.connect("name=bob");
    bob.expect("welcome");
    assert!(
        signal.try_connect("name=carol", &[]).is_err(),
        "a third connection with --max-connections-per-ip 2 was accepted"
    );
    // A close by the server (icegate_signal_closes_total{code}): over the message rate.
    for id in 0..60u64 {
        bob.send(json!({"v":1,"type":"ping","id":id}));
    }
    let closed = loop {
        if let Received::Closed(code) = bob.recv() {
            break code;
        }
    };
    assert_eq!(closed, Some(4429), "bob flooded pings");

    let mut names = BTreeSet::new();
    let want_first_use = [
        "icegate_relay_requests_total",
        "icegate_signal_errors_total",
        "icegate_signal_connections_refused_total",
        "icegate_signal_closes_total",
    ];
    // Counters may be updated just after the client saw the effect: poll briefly.
    eventually(Duration::from_secs(5), || {
        names = relay
            .metrics()
            .samples
            .into_iter()
            .chain(signal.metrics().samples)
            .map(|s| s.name)
            .collect();
        want_first_use.iter().all(|n| names.contains(*n))
    });
    for name in want_first_use {
        assert!(
            names.contains(name),
            "{name} did not appear after the traffic meant to create it; scraped: {names:?}"
        );
    }
    alice.close();
    names
}

#[test]
fn alerts_and_dashboard_query_only_metrics_the_daemons_export() {
    let rule_file = read("alerts.yml");
    let rules = rules(&rule_file).unwrap_or_else(|e| panic!("alerts.yml: {e}"));
    let alert_count =
        rule_file.matches("- alert:").count() + rule_file.matches("- record:").count();
    assert_eq!(
        rules.len(),
        alert_count,
        "alerts.yml: read {} rule expressions for {alert_count} rules",
        rules.len()
    );
    let recorded: BTreeSet<String> = rules
        .iter()
        .filter(|(_, record, _)| *record)
        .map(|(name, _, _)| name.clone())
        .collect();
    let alert_exprs: Vec<(String, String)> = rules
        .iter()
        .map(|(name, _, expr)| (format!("rule {name}"), expr.clone()))
        .collect();

    let dashboard: Value = serde_json::from_str(&read("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("grafana-dashboard.json is not JSON: {e}"));
    let dashboard_exprs =
        dashboard_exprs(&dashboard).unwrap_or_else(|e| panic!("grafana-dashboard.json: {e}"));
    let panel_targets = dashboard_exprs
        .iter()
        .filter(|(place, _)| place.starts_with("panel"))
        .count();
    assert!(
        panel_targets >= 10,
        "grafana-dashboard.json: found only {panel_targets} panel target expressions"
    );

    // The `up` alerts and panels must name the jobs of prometheus.yml.
    let config = read("prometheus.yml");
    for job in selected_jobs(&alert_exprs)
        .into_iter()
        .chain(selected_jobs(&dashboard_exprs))
    {
        assert!(
            config.contains(&format!("job_name: {job}")),
            "job {job:?} is selected in alerts.yml or the dashboard but not scraped by prometheus.yml"
        );
    }

    let live = live_metric_names();
    // The check itself can fail: a name no daemon exports is reported.
    let bogus = [(
        "self-check".to_string(),
        "rate(icegate_relay_bogus_total[5m])".to_string(),
    )];
    assert_eq!(
        unknown_names(&bogus, &live, &recorded).unwrap(),
        ["self-check: icegate_relay_bogus_total"]
    );

    let mut problems = Vec::new();
    for (file, exprs) in [
        ("alerts.yml", &alert_exprs),
        ("grafana-dashboard.json", &dashboard_exprs),
    ] {
        match unknown_names(exprs, &live, &recorded) {
            Ok(missing) => problems.extend(
                missing
                    .into_iter()
                    .map(|m| format!("{file}: {m} is not exported")),
            ),
            Err(e) => problems.push(format!("{file}: {e}")),
        }
    }
    // Names in the prose (annotations, panel descriptions, the README) must exist too.
    for file in ["alerts.yml", "grafana-dashboard.json", "README.md"] {
        for name in mentioned_metrics(&read(file)) {
            if !live.contains(&name) {
                problems.push(format!("{file}: mentions {name}, which is not exported"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "metrics used in docs/monitoring/ that the live relay and signal server do not export:\n  {}\nexported: {live:?}",
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------
// promtool

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .unwrap_or_else(|e| panic!("run promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool {} in docs/monitoring failed ({}):\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_config_the_rules_and_their_tests() {
    assert!(
        have_tool("promtool"),
        "`promtool` is not installed; run ./scripts/install-deps (Debian package prometheus)"
    );
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts_test.yml"]);
}

#[test]
fn promql_names_are_read_from_expressions() {
    let names = |expr: &str| metric_names(expr).unwrap().into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (job, instance) (rate(a_total{x="y", z=~"$v|{}"}[$__rate_interval]))
               / on (instance) group_left (quota) b_ratio > 0.8 and c:recorded offset 5m
               or absent(up{job="j"}) unless max_over_time(d[1d:5m]) == 1e3"#
        ),
        ["a_total", "b_ratio", "c:recorded", "d", "up"]
    );
    assert_eq!(names("sum(foo) without (le)"), ["foo"]);
    assert!(metric_names("sum(rate(x[5m])) by (a").is_err());
    assert!(metric_names("rte(x[5m])").is_err(), "a misspelt function");
    assert!(metric_names("x{a=\"b\"").is_err());
    assert!(metric_names("x / $var").is_err());
}

#[test]
fn rules_are_read_from_the_rule_file() {
    let yaml = "groups:\n  - name: g\n    rules:\n      - record: job:x:rate5m\n        expr: sum(rate(x[5m]))\n      - alert: A\n        expr: |\n          job:x:rate5m\n          > 1\n        for: 1m\n      - alert: B\n        expr: \"up == 0\"\n";
    assert_eq!(
        rules(yaml).unwrap(),
        [
            (
                "job:x:rate5m".to_string(),
                true,
                "sum(rate(x[5m]))".to_string()
            ),
            ("A".to_string(), false, "job:x:rate5m\n> 1\n".to_string()),
            ("B".to_string(), false, "up == 0".to_string()),
        ]
    );
    assert!(
        rules("      - alert: C\n        for: 1m\n").is_err(),
        "a rule without expr"
    );
}

// ------------------------------------------------------------------------------------------
// The dashboard's shape: what makes an import into another Grafana fail or look broken.

#[test]
fn dashboard_imports_anywhere_through_its_datasource_variable() {
    let dashboard: Value = serde_json::from_str(&read("grafana-dashboard.json"))
        .unwrap_or_else(|e| panic!("grafana-dashboard.json is not JSON: {e}"));
    let mut problems = Vec::new();
    for key in ["title", "uid"] {
        if !dashboard[key].is_string() {
            problems.push(format!("no {key}"));
        }
    }
    // Grafana 10 exports schemaVersion 37-39; older ones get migrated, newer ones may not load.
    match dashboard["schemaVersion"].as_u64() {
        Some(36..=39) => {}
        other => problems.push(format!("schemaVersion {other:?}, expected 36..=39")),
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has_datasource_variable = variables.iter().any(|v| {
        v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus"
    });
    if !has_datasource_variable {
        problems.push("no `datasource` variable of type datasource (prometheus)".into());
    }
    // Every datasource reference is the variable: a uid from one Grafana breaks the import
    // into another (the built-in annotation source excepted).
    fn datasources<'a>(value: &'a Value, out: &mut Vec<&'a Value>) {
        match value {
            Value::Object(map) => {
                if let Some(ds) = map.get("datasource") {
                    out.push(ds);
                }
                map.values().for_each(|v| datasources(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| datasources(v, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasources(&dashboard["panels"], &mut refs);
    datasources(&dashboard["templating"], &mut refs);
    for ds in refs {
        if ds["uid"] != "${datasource}" {
            problems.push(format!(
                "datasource {ds} is not the ${{datasource}} variable"
            ));
        }
    }
    // Panels: unique ids, on the 24-column grid, not overlapping, each with a query.
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let mut ids = BTreeSet::new();
    let mut cells = std::collections::BTreeMap::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        if !ids.insert(panel["id"].as_u64()) {
            problems.push(format!("panel {title:?}: duplicate id {}", panel["id"]));
        }
        let pos = |k: &str| panel["gridPos"][k].as_u64().unwrap_or(0);
        let (x, y, w, h) = (pos("x"), pos("y"), pos("w"), pos("h"));
        if w == 0 || h == 0 || x + w > 24 {
            problems.push(format!("panel {title:?}: gridPos {}", panel["gridPos"]));
        }
        for cell in (x..x + w).flat_map(|cx| (y..y + h).map(move |cy| (cx, cy))) {
            if let Some(other) = cells.insert(cell, title.clone()) {
                problems.push(format!("panel {title:?} overlaps {other:?}"));
                break;
            }
        }
        if panel["type"] != "row" && panel["targets"].as_array().is_none_or(Vec::is_empty) {
            problems.push(format!("panel {title:?} has no query"));
        }
    }
    assert!(
        problems.is_empty(),
        "grafana-dashboard.json:\n  {}",
        problems.join("\n  ")
    );
}
