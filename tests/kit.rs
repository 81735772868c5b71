//! The on-premises kit in `config/`: the systemd unit is hardened, the alert
//! rules and the Grafana dashboard name only metrics the daemon exports (SPEC
//! section 7) and are valid PromQL, and a real Prometheus scrapes a real
//! `bbcrawl run`.
//!
//! Tests that need `promtool`, `prometheus` or `systemd-analyze` (Debian
//! packages `prometheus` and `systemd`, both installed by `.ci/run`) print a
//! note and pass when the tool is missing, except under `CI=true` (or `CI=1`),
//! where a missing tool fails the test.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use std::sync::LazyLock;

use bbcrawl::simulator::RepoSpec;
use bbcrawl::telemetry;
use serde_json::Value;

use crate::util::{self, WS};

/// Every metric the daemon exports (base names; histograms also as
/// `_bucket`, `_sum`, `_count`), from the one place they are defined. The
/// dashboard and alerts may use only these and Prometheus's own `up`.
static METRICS: LazyLock<Vec<&'static str>> =
    LazyLock::new(|| telemetry::METRICS.iter().map(|m| m.name).collect());

static HISTOGRAMS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    telemetry::METRICS
        .iter()
        .filter(|m| matches!(m.kind, telemetry::Kind::Histogram))
        .map(|m| m.name)
        .collect()
});

/// Bound on every wait for a process or a condition.
const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Reading the kit

fn kit_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn kit_file(rel: &str) -> String {
    std::fs::read_to_string(kit_path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The base metric name `name` stands for, if the daemon exports it.
fn known_metric(name: &str) -> Option<&'static str> {
    if let Some(m) = METRICS.iter().find(|m| **m == name) {
        return Some(m);
    }
    HISTOGRAMS.iter().copied().find(|h| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| name.strip_prefix(h) == Some(suffix))
    })
}

/// PromQL words that are not metric names: operators, modifiers and the
/// aggregations (which may be followed by `by (…)` rather than `(`).
const PROMQL_KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers outside label
/// matchers, ranges, strings and grouping lists that are neither a function
/// call nor a keyword. A small scanner rather than a regex or a parser.
fn selected_metrics(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    // Set after `by`/`without`/`on`/`ignoring`/`group_*`: the next `( … )`
    // lists label names, not metrics.
    let mut label_list_next = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    if chars[i] == '\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' {
                        i += 1;
                        while i < chars.len() && chars[i] != '"' {
                            i += 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '(' if label_list_next => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                label_list_next = false;
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (5m, 1e3, 0.95).
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                let is_call = j < chars.len() && chars[j] == '(';
                let lower = word.to_ascii_lowercase();
                if PROMQL_KEYWORDS.contains(&lower.as_str()) {
                    label_list_next = matches!(
                        lower.as_str(),
                        "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                    );
                } else if !is_call {
                    out.push(word);
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// Metric names in `exprs` that are neither exported by the daemon nor `up`.
fn unknown_metrics<'a>(exprs: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut bad = Vec::new();
    for expr in exprs {
        for name in selected_metrics(expr) {
            if name != "up" && known_metric(&name).is_none() {
                bad.push(format!("{name} (in `{expr}`)"));
            }
        }
    }
    bad
}

/// Base names of the exported metrics that `exprs` use.
fn used_metrics<'a>(exprs: impl IntoIterator<Item = &'a String>) -> BTreeSet<&'static str> {
    exprs
        .into_iter()
        .flat_map(|e| selected_metrics(e))
        .filter_map(|n| known_metric(&n))
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&kit_file("config/grafana/bbcrawl-dashboard.json"))
        .expect("the dashboard is valid JSON")
}

/// Every panel, rows' nested panels included.
fn dashboard_panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels is an array") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every `targets[].expr` of every panel.
fn dashboard_exprs(dash: &Value) -> Vec<String> {
    dashboard_panels(dash)
        .into_iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| {
            t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("target without expr: {t}"))
                .to_owned()
        })
        .collect()
}

/// A dashboard query as Prometheus sees it once Grafana has filled in the
/// template variables.
fn with_variables(expr: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$__rate_interval", "5m")
}

/// The leading-space count of a line.
fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// A YAML value that starts on `line` after `key:`: inline (quotes
/// stripped) or a folded/literal block (`>-`, `|`) of the following, more
/// indented lines. Enough YAML for the rule file, without a YAML crate.
fn yaml_value(lines: &[&str], at: usize, key: &str) -> String {
    let rest = lines[at].trim_start().trim_start_matches("- ")[key.len() + 1..].trim();
    if rest.starts_with('>') || rest.starts_with('|') {
        let base = indent(lines[at]);
        lines[at + 1..]
            .iter()
            .take_while(|l| l.trim().is_empty() || indent(l) > base)
            .map(|l| l.trim())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(if rest.starts_with('>') { " " } else { "\n" })
    } else {
        rest.trim_matches(|c| c == '"' || c == '\'').to_owned()
    }
}

/// One alerting rule of alerts.yml, as far as these tests need it.
#[derive(Debug)]
struct AlertRule {
    name: String,
    expr: String,
    severity: Option<String>,
    summary: bool,
    description: bool,
}

fn alert_rules() -> Vec<AlertRule> {
    let text = kit_file("config/prometheus/alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut rules: Vec<AlertRule> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start().trim_start_matches("- ");
        if t.starts_with('#') {
            continue;
        }
        if t.starts_with("alert:") {
            rules.push(AlertRule {
                name: yaml_value(&lines, i, "alert"),
                expr: String::new(),
                severity: None,
                summary: false,
                description: false,
            });
            continue;
        }
        let Some(rule) = rules.last_mut() else {
            continue;
        };
        if t.starts_with("expr:") {
            rule.expr = yaml_value(&lines, i, "expr");
        } else if t.starts_with("severity:") {
            rule.severity = Some(yaml_value(&lines, i, "severity"));
        } else if t.starts_with("summary:") {
            rule.summary = !yaml_value(&lines, i, "summary").is_empty();
        } else if t.starts_with("description:") {
            rule.description = !yaml_value(&lines, i, "description").is_empty();
        }
    }
    rules
}

/// alerts.yml without its `annotations:` blocks, for `promtool test rules`,
/// which compares annotations verbatim; the tests here are about when an
/// alert fires and with which labels.
fn alerts_without_annotations() -> String {
    let text = kit_file("config/prometheus/alerts.yml");
    let mut out = String::new();
    let mut skip_deeper_than: Option<usize> = None;
    for line in text.lines() {
        if let Some(base) = skip_deeper_than {
            if line.trim().is_empty() || indent(line) > base {
                continue;
            }
            skip_deeper_than = None;
        }
        if line.trim_start().starts_with("annotations:") {
            skip_deeper_than = Some(indent(line));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `Directive=value` lines of a systemd unit, in order (a directive may repeat).
fn unit_directives(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// The Debian package that provides each external tool these tests run.
const TOOL_PACKAGES: &[(&str, &str)] = &[
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    ("systemd-analyze", "systemd"),
];

/// Does a `CI` variable with this value mark a CI run? (`true` or `1`, as CI
/// services set it.)
pub(crate) fn ci_means_ci(value: &str) -> bool {
    value.eq_ignore_ascii_case("true") || value == "1"
}

/// `tool` on PATH for `test`, or `None` (the test returns early) after a
/// note on stderr; under CI a missing tool panics instead.
pub(crate) fn find_tool(test: &str, tool: &str) -> Option<PathBuf> {
    let found = on_path(tool);
    if found.is_none() {
        let ci = std::env::var("CI").is_ok_and(|v| ci_means_ci(&v));
        // Written to stderr itself: libtest captures `eprintln!` of a passing
        // test, and a skip nobody sees is the silent pass this note prevents.
        let _ = writeln!(std::io::stderr(), "{}", missing_tool(test, tool, ci));
    }
    found
}

/// A tool `test` needs is missing. In CI that fails the test (a skip there
/// would pass a check that never ran); elsewhere, the note that says the
/// test is skipped and which package to install.
fn missing_tool(test: &str, tool: &str, ci: bool) -> String {
    let package = TOOL_PACKAGES
        .iter()
        .find(|(t, _)| *t == tool)
        .map_or(tool, |(_, p)| p);
    let how =
        format!("Debian package `{package}`: `.ci/run` installs it with apt-get install {package}");
    assert!(
        !ci,
        "{test}: {tool} is not on PATH, and under CI a missing tool fails the test ({how})"
    );
    format!("note: {test} skipped: {tool} not on PATH ({how}; under CI=true this fails)")
}

/// Runs a tool to completion and returns (success, stdout + stderr).
fn run_tool(program: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------
// The scanner the checks below rely on

#[test]
fn metric_scan_finds_selectors_but_not_functions_labels_or_durations() {
    let expr = r#"histogram_quantile(0.95, sum by (le, endpoint) (rate(bbcrawl_http_request_duration_seconds_bucket{instance=~"$instance", x="a{b}"}[5m]))) / on (job) group_left (version) bbcrawl_build_info or time() - process_cpu_seconds_total offset 1h > bool 3"#;
    assert_eq!(
        selected_metrics(expr),
        [
            "bbcrawl_http_request_duration_seconds_bucket",
            "bbcrawl_build_info",
            "process_cpu_seconds_total"
        ]
    );
    assert_eq!(
        unknown_metrics(&[expr.to_owned()]),
        [format!("process_cpu_seconds_total (in `{expr}`)")]
    );
    assert_eq!(known_metric("bbcrawl_repos_bucket"), None);
    assert_eq!(
        known_metric("bbcrawl_store_write_duration_seconds_count"),
        Some("bbcrawl_store_write_duration_seconds")
    );
}

// ---------------------------------------------------------------------------
// Missing tools

#[test]
fn a_missing_tool_fails_under_ci_naming_its_package_and_is_skipped_elsewhere() {
    let panic = std::panic::catch_unwind(|| missing_tool("some_test", "systemd-analyze", true))
        .expect_err("under CI a missing tool fails the test");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("systemd-analyze is not on PATH")
            && message.contains("apt-get install systemd")
            && message.contains(".ci/run"),
        "{message}"
    );
    let note = missing_tool("some_test", "promtool", false);
    assert!(
        note.contains("some_test skipped: promtool not on PATH")
            && note.contains("apt-get install prometheus"),
        "{note}"
    );
    for value in ["true", "TRUE", "1"] {
        assert!(ci_means_ci(value), "CI={value}");
    }
    for value in ["", "0", "false", "no"] {
        assert!(!ci_means_ci(value), "CI={value}");
    }
}

// ---------------------------------------------------------------------------
// Grafana dashboard

#[test]
fn dashboard_queries_use_only_exported_metrics() {
    let dash = dashboard();
    let exprs = dashboard_exprs(&dash);
    assert!(exprs.len() >= 10, "too few queries: {exprs:?}");
    assert_eq!(unknown_metrics(&exprs), Vec::<String>::new());
    // The template variables query metrics too.
    let variable_queries: Vec<String> = dash["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter_map(|v| v["definition"].as_str())
        .map(|q| {
            q.trim_start_matches("label_values(")
                .split(',')
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(unknown_metrics(&variable_queries), Vec::<String>::new());
}

#[test]
fn dashboard_shows_every_exported_metric() {
    let used = used_metrics(&dashboard_exprs(&dashboard()));
    let missing: Vec<_> = METRICS.iter().filter(|m| !used.contains(*m)).collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

#[test]
fn dashboard_has_the_operator_panels() {
    let exprs = dashboard_exprs(&dashboard());
    let compact: Vec<String> = exprs.iter().map(|e| e.replace(' ', "")).collect();
    let has = |needles: &[&str]| {
        compact
            .iter()
            .any(|e| needles.iter().all(|n| e.contains(&n.replace(' ', ""))))
    };
    for needles in [
        &["rate(bbcrawl_commits_stored_total", "[5m])"][..],
        &["sum by (code) (rate(bbcrawl_http_requests_total"],
        &["rate(bbcrawl_rate_limited_total"],
        &["rate(bbcrawl_backoff_seconds_total"],
        &["bbcrawl_ratelimit_remaining_estimate"],
        &["bbcrawl_ratelimit_limit"],
        &["sum by (state) (bbcrawl_repos"],
        &["time() - bbcrawl_last_sync_success_timestamp_seconds"],
        &[
            "histogram_quantile(0.95",
            "bbcrawl_http_request_duration_seconds_bucket",
        ],
        &["bbcrawl_store_size_bytes"],
        &["bbcrawl_writer_queue_depth"],
    ] {
        assert!(has(needles), "no panel queries {needles:?}");
    }
}

#[test]
fn dashboard_imports_into_any_grafana() {
    let dash = dashboard();
    let schema = dash["schemaVersion"].as_u64().expect("schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert_eq!(dash["uid"], "bbcrawl");
    // The data source is a template variable, so neither import nor file
    // provisioning depends on a data source uid of the author's Grafana.
    let vars = dash["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "no DS_PROMETHEUS data source variable"
    );
    let mut ids = BTreeSet::new();
    for p in dashboard_panels(&dash) {
        assert!(ids.insert(p["id"].as_u64()), "duplicate panel id: {p}");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "no gridPos: {p}");
        if p["type"] == "row" {
            continue;
        }
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()));
        let sources = std::iter::once(&p["datasource"]).chain(
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| &t["datasource"]),
        );
        for ds in sources {
            assert_eq!(ds["uid"], "${DS_PROMETHEUS}", "panel {}", p["title"]);
        }
    }
}

// ---------------------------------------------------------------------------
// Prometheus alert rules and scrape job

#[test]
fn alert_rules_use_only_exported_metrics() {
    let rules = alert_rules();
    assert!(rules.len() >= 5, "{rules:?}");
    let exprs: Vec<String> = rules.iter().map(|r| r.expr.clone()).collect();
    assert!(exprs.iter().all(|e| !e.is_empty()), "{rules:?}");
    assert_eq!(unknown_metrics(&exprs), Vec::<String>::new());
}

#[test]
fn alert_rules_cover_stale_failed_rate_limited_failing_and_down() {
    let rules = alert_rules();
    let covers = |needle: &str| rules.iter().any(|r| r.expr.contains(needle));
    for needle in [
        "time() - bbcrawl_last_sync_success_timestamp_seconds",
        "bbcrawl_last_sync_failed == 1",
        "bbcrawl_rate_limited_total",
        "bbcrawl_repos{state=\"failed\"} > 0",
        "up{job=\"bbcrawl\"} == 0",
    ] {
        assert!(covers(needle), "no alert on {needle}: {rules:?}");
    }
    for r in &rules {
        assert!(
            matches!(r.severity.as_deref(), Some("critical" | "warning" | "info")),
            "{} has no severity",
            r.name
        );
        assert!(
            r.summary && r.description,
            "{} lacks summary or description",
            r.name
        );
    }
}

#[test]
fn alert_rules_pass_promtool_check() {
    let Some(promtool) = find_tool("alert_rules_pass_promtool_check", "promtool") else {
        return;
    };
    let file = kit_path("config/prometheus/alerts.yml");
    let (ok, out) = run_tool(&promtool, &["check", "rules", &file.to_string_lossy()]);
    assert!(ok, "promtool check rules failed:\n{out}");
    let file = kit_path("config/prometheus/scrape.yml");
    let (ok, out) = run_tool(&promtool, &["check", "config", &file.to_string_lossy()]);
    assert!(ok, "promtool check config failed:\n{out}");
}

/// promtool's rule unit tests: each alert fires after its `for`, with its
/// severity, on the series the daemon exports, and not before.
#[test]
fn alerts_fire_on_matching_series() {
    let Some(promtool) = find_tool("alerts_fire_on_matching_series", "promtool") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("alerts.yml"), alerts_without_annotations()).unwrap();
    let l = r#"job="bbcrawl",instance="host:9490""#;
    let fires = |alert: &str, at: &str, severity: &str, extra: &str| {
        format!(
            "      - eval_time: {at}\n        alertname: {alert}\n        exp_alerts:\n          - exp_labels: {{severity: {severity}, job: bbcrawl, instance: \"host:9490\"{extra}}}\n"
        )
    };
    let silent =
        |alert: &str, at: &str| format!("      - eval_time: {at}\n        alertname: {alert}\n");
    let mut t = String::from("rule_files: [alerts.yml]\nevaluation_interval: 1m\ntests:\n");
    // A daemon that syncs once at minute 1, then its passes fail from minute
    // 2; two repositories fail; Bitbucket answers 429 once a minute; the
    // target goes down at minute 100.
    t += "  - interval: 1m\n    input_series:\n";
    for (series, values) in [
        ("bbcrawl_last_sync_success_timestamp_seconds", "60x130"),
        ("bbcrawl_last_sync_failed", "0 0 1x128"),
        ("bbcrawl_rate_limited_total", "0+1x130"),
        ("bbcrawl_backoff_seconds_total", "0x130"),
        ("bbcrawl_store_free_bytes", "2e9-2e7x130"),
        ("up", "1x99 0x30"),
    ] {
        t += &format!("      - series: '{series}{{{l}}}'\n        values: '{values}'\n");
    }
    t += &format!(
        "      - series: 'bbcrawl_repos{{{l},state=\"failed\"}}'\n        values: '2x130'\n"
    );
    t +=
        &format!("      - series: 'bbcrawl_repos{{{l},state=\"ok\"}}'\n        values: '40x130'\n");
    // Webhook deliveries that all fail the signature check.
    t += &format!(
        "      - series: 'bbcrawl_hook_deliveries_total{{{l},outcome=\"bad_signature\"}}'\n        values: '0+2x130'\n"
    );
    t += &format!(
        "      - series: 'bbcrawl_hook_deliveries_total{{{l},outcome=\"accepted\"}}'\n        values: '0x130'\n"
    );
    t += "    alert_rule_test:\n";
    t += &silent("BbcrawlLastSyncFailed", "5m");
    t += &fires("BbcrawlLastSyncFailed", "10m", "warning", "");
    t += &silent("BbcrawlSyncStale", "60m");
    t += &fires("BbcrawlSyncStale", "80m", "critical", "");
    t += &silent("BbcrawlRateLimited", "10m");
    t += &fires("BbcrawlRateLimited", "40m", "warning", "");
    t += &silent("BbcrawlRepositoriesFailing", "50m");
    t += &fires(
        "BbcrawlRepositoriesFailing",
        "70m",
        "warning",
        ", state: failed",
    );
    t += &silent("BbcrawlStoreDiskLow", "10m");
    t += &fires("BbcrawlStoreDiskLow", "30m", "warning", "");
    t += &silent("BbcrawlDown", "99m");
    t += &fires("BbcrawlDown", "110m", "critical", "");
    t += &silent("BbcrawlTargetMissing", "110m");
    t += &silent("BbcrawlWebhookSecretMismatch", "10m");
    t += &fires("BbcrawlWebhookSecretMismatch", "40m", "warning", "");
    // A healthy daemon: nothing fires.
    t += "  - interval: 1m\n    input_series:\n";
    for (series, values) in [
        ("bbcrawl_last_sync_success_timestamp_seconds", "0+60x180"),
        ("bbcrawl_last_sync_failed", "0x180"),
        ("bbcrawl_rate_limited_total", "0x180"),
        ("bbcrawl_backoff_seconds_total", "0+1x180"),
        ("bbcrawl_store_free_bytes", "5e10x180"),
        ("up", "1x180"),
    ] {
        t += &format!("      - series: '{series}{{{l}}}'\n        values: '{values}'\n");
    }
    // A scanner's forged deliveries among Bitbucket's accepted ones.
    for (outcome, values) in [("bad_signature", "0+1x180"), ("accepted", "0+3x180")] {
        t += &format!(
            "      - series: 'bbcrawl_hook_deliveries_total{{{l},outcome=\"{outcome}\"}}'\n        values: '{values}'\n"
        );
    }
    t += "    alert_rule_test:\n";
    for alert in alert_rules() {
        t += &silent(&alert.name, "170m");
    }
    // A Prometheus without the bbcrawl target.
    t += "  - interval: 1m\n    input_series:\n      - series: 'up{job=\"node\"}'\n        values: '1x30'\n    alert_rule_test:\n";
    t += "      - eval_time: 20m\n        alertname: BbcrawlTargetMissing\n        exp_alerts:\n          - exp_labels: {severity: warning, job: bbcrawl}\n";
    let test_file = dir.path().join("alerts_test.yml");
    std::fs::write(&test_file, &t).unwrap();
    let (ok, out) = run_tool(&promtool, &["test", "rules", &test_file.to_string_lossy()]);
    assert!(
        ok,
        "promtool test rules failed:\n{out}\n--- test file:\n{t}"
    );
}

#[test]
fn scrape_job_matches_the_default_listen_address_and_the_alerts() {
    let scrape = kit_file("config/prometheus/scrape.yml");
    let example = kit_file("config/bbcrawl.example.toml");
    assert!(example.contains("listen = \"127.0.0.1:9490\""));
    assert!(scrape.contains("job_name: bbcrawl"), "{scrape}");
    assert!(scrape.contains("\"127.0.0.1:9490\""), "{scrape}");
    assert!(scrape.contains("metrics_path: /metrics"), "{scrape}");
    assert!(scrape.contains("scrape_interval: 30s"), "{scrape}");
    // The alerts watch the job by the name the scrape job gives it.
    assert!(alert_rules()
        .iter()
        .any(|r| r.expr.contains("up{job=\"bbcrawl\"}")));
}

// ---------------------------------------------------------------------------
// systemd unit

#[test]
fn systemd_unit_is_hardened() {
    let text = kit_file("config/bbcrawl.service");
    let directives = unit_directives(&text);
    let values = |key: &str| -> Vec<&str> {
        directives
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> String {
        let v = values(key);
        assert_eq!(v.len(), 1, "{key}= should appear once: {v:?}");
        v[0].to_owned()
    };
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("CapabilityBoundingSet", ""),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("Restart", "on-failure"),
        ("StateDirectory", "bbcrawl"),
    ] {
        assert_eq!(one(key), want, "{key}=");
    }
    assert!(
        values("SystemCallFilter").contains(&"@system-service"),
        "SystemCallFilter=@system-service"
    );
    // A dedicated user, never root.
    assert!(
        values("DynamicUser") == ["yes"] || values("User") == ["bbcrawl"],
        "no dedicated user"
    );
    assert!(values("User").iter().all(|u| *u != "root"));
    // The daemon stops within 10 s of SIGTERM; systemd must wait longer
    // than that before it kills.
    let stop: u64 = one("TimeoutStopSec")
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!((11..=60).contains(&stop), "TimeoutStopSec={stop}");

    let exec = one("ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/bbcrawl run ")
            && exec.contains("--log-format json")
            && exec.contains("--config /etc/bbcrawl/bbcrawl.toml"),
        "ExecStart={exec}"
    );
    // The store lives in the state directory.
    assert!(
        values("Environment").contains(&"BBCRAWL_STORE=/var/lib/bbcrawl")
            || exec.contains("--store /var/lib/bbcrawl"),
        "store is not /var/lib/bbcrawl"
    );
    // Secrets come from a credential file, never from the unit itself.
    let credential = one("LoadCredential");
    let (name, source) = credential
        .split_once(':')
        .expect("LoadCredential=NAME:PATH");
    assert!(source.starts_with("/etc/bbcrawl/"), "{credential}");
    assert!(
        values("Environment").contains(&format!("BITBUCKET_ACCESS_TOKEN_FILE=%d/{name}").as_str()),
        "the credential is not handed to bbcrawl"
    );
    for (k, v) in &directives {
        assert!(
            !(k == "Environment"
                && (v.starts_with("BITBUCKET_ACCESS_TOKEN=")
                    || v.starts_with("BITBUCKET_API_TOKEN=")
                    || v.starts_with("BITBUCKET_PASSWORD="))),
            "a secret inline in the unit: {k}={v}"
        );
    }
}

/// systemd's own checks: the unit parses, and its exposure score is low.
#[test]
fn systemd_unit_passes_systemd_analyze() {
    let Some(analyze) = find_tool("systemd_unit_passes_systemd_analyze", "systemd-analyze") else {
        return;
    };
    // `verify` wants ExecStart's binary to exist: point it at the one built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("bbcrawl.service");
    let text = kit_file("config/bbcrawl.service")
        .replace("/usr/local/bin/bbcrawl", env!("CARGO_BIN_EXE_bbcrawl"));
    std::fs::write(&unit, text).unwrap();
    let unit = unit.to_string_lossy();
    let (ok, out) = run_tool(&analyze, &["verify", &unit]);
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    let (ok, out) = run_tool(&analyze, &["security", "--offline=yes", &unit]);
    assert!(ok, "systemd-analyze security:\n{out}");
    let score: f64 = out
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for bbcrawl.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{out}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}

// ---------------------------------------------------------------------------
// A real Prometheus

/// A Prometheus server on a free loopback port, killed when dropped.
pub(crate) struct Prometheus {
    child: tokio::process::Child,
    url: String,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` (if any) every second as job
    /// `bbcrawl`, and waits until it is ready.
    async fn start(binary: &Path, target: Option<&str>) -> Prometheus {
        let job = target.map(|target| {
            format!(
                "  - job_name: bbcrawl\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{target}\"]\n"
            )
        });
        Prometheus::start_job(binary, job.as_deref().unwrap_or("")).await
    }

    /// Starts `prometheus` with `job` (YAML, indented as an entry of
    /// `scrape_configs`) scraped every second, and waits until it is ready.
    pub(crate) async fn start_job(binary: &Path, job: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{job}"
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        let port = util::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("cannot start prometheus");
        let mut prom = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(r) = prom.http.get(format!("{}/-/ready", prom.url)).send().await {
                if r.status().is_success() {
                    return prom;
                }
            }
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready within {WAIT:?}:\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query`: the HTTP status and the JSON answer.
    async fn query(&self, expr: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .expect("query prometheus");
        let status = r.status().as_u16();
        (status, r.json().await.expect("prometheus answers JSON"))
    }

    /// The single value of an instant query, if it has one.
    pub(crate) async fn value(&self, expr: &str) -> Option<f64> {
        let (_, v) = self.query(expr).await;
        let result = v["data"]["result"].as_array()?;
        match result.as_slice() {
            [one] => one["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

/// Every dashboard panel query and every alert expression is PromQL that
/// Prometheus accepts (it answers 400 `bad_data` to a syntax error).
#[tokio::test]
async fn dashboard_and_alert_queries_are_valid_promql() {
    let Some(prometheus) = find_tool("dashboard_and_alert_queries_are_valid_promql", "prometheus")
    else {
        return;
    };
    let prom = Prometheus::start(&prometheus, None).await;
    let exprs = dashboard_exprs(&dashboard())
        .into_iter()
        .map(|e| with_variables(&e))
        .chain(alert_rules().into_iter().map(|r| r.expr));
    for expr in exprs {
        let (status, answer) = prom.query(&expr).await;
        assert!(
            status == 200 && answer["status"] == "success",
            "Prometheus refuses `{expr}`: {status} {answer}"
        );
    }
}

/// Prometheus scrapes `bbcrawl run` and sees every commit of the simulator's
/// default branches stored; everything the daemon exports is in METRICS.
#[tokio::test]
async fn prometheus_scrapes_commits_stored_from_the_daemon() {
    let Some(prometheus) = find_tool(
        "prometheus_scrapes_commits_stored_from_the_daemon",
        "prometheus",
    ) else {
        return;
    };
    let sim = util::world(0);
    for (slug, commits) in [("api", 230), ("web", 75), ("tools", 1)] {
        sim.add_repo(WS, RepoSpec::new(slug, commits));
    }
    sim.add_repo(
        WS,
        RepoSpec {
            mainbranch: None,
            commits: 0,
            ..RepoSpec::new("empty", 0)
        },
    );
    let expected: usize = sim
        .repos(WS)
        .iter()
        .filter(|r| r.mainbranch.is_some())
        .map(|r| sim.branch_commits(WS, &r.slug).len())
        .sum();
    assert!(expected >= 306, "the simulator holds {expected} commits");
    let server = util::serve(&sim).await;

    let (dir, store) = util::fresh_store();
    let log = dir.path().join("bbcrawl.log");
    let mut daemon = tokio::process::Command::new(env!("CARGO_BIN_EXE_bbcrawl"))
        .arg("run")
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BBCRAWL_API_URL", server.api_url())
        .env("BBCRAWL_WORKSPACES", WS)
        .env("BITBUCKET_ACCESS_TOKEN", util::TOKEN)
        .env("BBCRAWL_STORE", &store)
        .env("BBCRAWL_LISTEN", "127.0.0.1:0")
        .env("BBCRAWL_INTERVAL_SECONDS", "2")
        .env("BBCRAWL_REQUESTS_PER_HOUR", "1000000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("cannot start bbcrawl run");
    let addr = crate::util::daemon_addr(&store, &mut daemon, &log).await;

    let prom = Prometheus::start(&prometheus, Some(&addr)).await;
    let deadline = Instant::now() + WAIT;
    let mut seen = None;
    while seen != Some(expected as f64) {
        assert!(
            Instant::now() < deadline,
            "bbcrawl_commits_stored_total is {seen:?} after {WAIT:?}, want {expected}\n\
             --- bbcrawl:\n{}\n--- prometheus:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        seen = prom.value("bbcrawl_commits_stored_total").await;
    }
    assert_eq!(prom.value("up{job=\"bbcrawl\"}").await, Some(1.0));

    // The daemon exports nothing the dashboard and alerts do not know of.
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .filter(|n| n.starts_with("bbcrawl_"))
        .collect();
    let unlisted: Vec<_> = exported
        .iter()
        .filter(|n| known_metric(n).is_none())
        .collect();
    assert!(
        unlisted.is_empty(),
        "exported but not in the kit: {unlisted:?}"
    );

    daemon.kill().await.unwrap();
    drop(prom);
}
