//! What each key accepts: workspace names and URLs, API base URLs, listen addresses,
//! dates, integer ranges, comma-separated lists.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use url::Url;

use super::resolve::Refusal;
use crate::schedule::{GlobError, SlugGlobs};

/// Normalises a workspace given as a name or a bitbucket.org URL to the workspace name.
///
/// Accepted forms: `acme`, `https://bitbucket.org/acme/`, `https://bitbucket.org/acme/repo`,
/// `bitbucket.org/acme`, `www.bitbucket.org/acme` — the name is the first path segment.
///
/// Rules, from Bitbucket's own (workspace IDs are lowercase letters, digits, `-` and
/// `_`): upper-case letters are accepted and lowercased, because Bitbucket treats the
/// ID case-insensitively in URLs and people paste `Acme`; any other character
/// (including `.`, spaces and `/` beyond the URL form) is rejected, as are empty names
/// and URLs of other hosts (a `https://api.bitbucket.org/...` URL is also rejected: it
/// belongs in `api_url`).
pub fn parse_workspace(input: &str) -> Result<String, String> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err("a workspace name must not be empty".to_string());
    }
    let name = if trimmed.contains('/') || trimmed.contains(':') {
        workspace_from_url(trimmed)?
    } else {
        trimmed.to_string()
    };
    let name = name.to_ascii_lowercase();
    if name.is_empty() {
        return Err(format!("`{trimmed}` names no workspace"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "`{trimmed}` is not a workspace name: {bad:?} is not allowed (letters, digits, '-' and '_' only)"
        ));
    }
    Ok(name)
}

/// The first path segment of a bitbucket.org URL (scheme optional).
fn workspace_from_url(input: &str) -> Result<String, String> {
    let with_scheme = if input.contains("://") {
        input.to_string()
    } else {
        format!("https://{input}")
    };
    let url = Url::parse(&with_scheme)
        .map_err(|e| format!("`{input}` is neither a workspace name nor a URL ({e})"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!("`{input}` is not a bitbucket.org URL"));
    }
    match url.host_str() {
        Some("bitbucket.org") | Some("www.bitbucket.org") => {}
        _ => {
            return Err(format!(
                "`{input}` is not a bitbucket.org URL: give the workspace name or https://bitbucket.org/WORKSPACE/"
            ))
        }
    }
    let first = url
        .path_segments()
        .and_then(|mut segments| segments.next())
        .unwrap_or("");
    if first.is_empty() {
        return Err(format!(
            "`{input}` names no workspace: expected https://bitbucket.org/WORKSPACE/"
        ));
    }
    Ok(first.to_string())
}

/// Workspace names or URLs, normalised (see [`parse_workspace`]), duplicates removed
/// with the first occurrence's position kept.
pub(super) fn parse_workspaces(entries: Vec<String>) -> Result<Vec<String>, Refusal> {
    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let name = parse_workspace(&entry)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Glob patterns on slugs, trimmed and compiled; an empty or invalid one is refused,
/// naming its position.
pub(super) fn parse_globs(list: Vec<String>) -> Result<SlugGlobs, Refusal> {
    let patterns = list
        .into_iter()
        .enumerate()
        .map(|(i, pattern)| match pattern.trim() {
            "" => Err(Refusal::entry(i, "a pattern must not be empty")),
            pattern => Ok(pattern.to_string()),
        })
        .collect::<Result<Vec<String>, Refusal>>()?;
    SlugGlobs::new(patterns).map_err(|e| match e {
        GlobError::Invalid { index, .. } => Refusal::entry(index, e.to_string()),
        GlobError::Compile { .. } => Refusal::from(e.to_string()),
    })
}

/// A path that is not empty (`--store ""` is a mistake, not the working directory).
pub(super) fn non_empty_path(path: PathBuf) -> Result<PathBuf, Refusal> {
    if path.as_os_str().is_empty() {
        return Err("must not be empty".into());
    }
    Ok(path)
}

/// `since` in the file: a string, or a TOML date / date-time written without quotes
/// (its `Display` is RFC 3339 shaped), as text for [`parse_since`].
pub(super) fn toml_date_text(value: toml::Value) -> Result<String, Refusal> {
    match value {
        toml::Value::String(s) => Ok(s),
        toml::Value::Datetime(dt) => Ok(dt.to_string()),
        _ => Err("must be a date (YYYY-MM-DD) or an RFC 3339 date-time".into()),
    }
}

/// Splits a comma-separated list, trimming entries and skipping empty ones (so that a
/// trailing comma is harmless).
pub(super) fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}
/// Parses and normalises an API base URL (see [`Config::api_url`](super::Config::api_url) for the normal form).
pub(super) fn parse_api_url(raw: &str) -> Result<Url, String> {
    let mut url = Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
    // User info would put a secret into every log line that prints the URL; say so
    // without quoting the URL.
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not contain a user name or password: configure `[[credentials]]` instead"
                .to_string(),
        );
    }
    match url.scheme() {
        "https" => {}
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if !loopback {
                return Err(format!(
                    "http:// is only allowed to a loopback host (127.0.0.0/8, ::1, localhost); use https:// (got {url})"
                ));
            }
        }
        other => return Err(format!("scheme `{other}` is not supported: use https://")),
    }
    if url.host().is_none() {
        return Err(format!("has no host (got {url})"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("must not have a query or fragment (got {url})"));
    }
    let path = url.path().trim_end_matches('/').to_string();
    url.set_path(&path);
    Ok(url)
}

/// RFC 3339 (`2024-05-01T12:00:00Z`) or a date (`2024-05-01`, midnight UTC).
pub(super) fn parse_since(raw: &str) -> Result<DateTime<Utc>, String> {
    parse_instant(raw).ok_or_else(|| {
        format!(
            "must be a date (YYYY-MM-DD, midnight UTC) or an RFC 3339 date-time with offset like 2024-05-01T12:00:00Z (got {:?})",
            raw.trim()
        )
    })
}

/// A moment as users give one (`since`, `--since`, `--until`): RFC 3339 with
/// any offset, or `YYYY-MM-DD` meaning midnight UTC.
pub fn parse_instant(raw: &str) -> Option<DateTime<Utc>> {
    let raw = raw.trim();
    if let Ok(date) = NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        return Some(date.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    DateTime::parse_from_rfc3339(raw)
        .ok()
        .map(|dt| dt.with_timezone(&Utc))
}

/// The accepted range of an integer key.
#[derive(Clone, Copy)]
pub(super) struct IntRange {
    pub(super) min: i64,
    pub(super) max: i64,
}

impl IntRange {
    /// A number written as text (an environment variable). Digits beyond `i64` are a
    /// number too large, not "not a number".
    pub(super) fn parse_text(self, text: &str) -> Result<i64, Refusal> {
        text.parse::<i64>().map_err(|e| {
            let message = match e.kind() {
                std::num::IntErrorKind::PosOverflow => self.out_of_range(true, text),
                std::num::IntErrorKind::NegOverflow => self.out_of_range(false, text),
                _ => format!("must be a whole number (got {text:?})"),
            };
            Refusal::from(message)
        })
    }

    /// `value` if it is in range, as the key's type.
    pub(super) fn check<T: TryFrom<i64>>(self, value: i64) -> Result<T, Refusal> {
        if value < self.min || value > self.max {
            return Err(self
                .out_of_range(value > self.max, &value.to_string())
                .into());
        }
        // Every key's range fits its target type, so this only fails if a range is
        // declared wider than the type; it still reports rather than truncates.
        T::try_from(value).map_err(|_| self.out_of_range(value > 0, &value.to_string()).into())
    }

    /// What is wrong with `got`, which is above the range when `too_large` and below it
    /// otherwise. A range chosen for the key is given whole; a key whose maximum is only
    /// its type's names the bound that was crossed (a message saying "at least 1" about
    /// 4294967296 would send the user the wrong way).
    fn out_of_range(self, too_large: bool, got: &str) -> String {
        if self.max < i64::from(u32::MAX) {
            format!("must be between {} and {} (got {got})", self.min, self.max)
        } else if too_large {
            format!("must be at most {} (got {got})", self.max)
        } else {
            format!("must be at least {} (got {got})", self.min)
        }
    }
}

/// `IP:PORT` (`127.0.0.1:9490`, `[::1]:9490`), or `localhost:PORT` as 127.0.0.1 —
/// no DNS lookup, so loading the config never touches the network.
pub(super) fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
    let raw = raw.trim();
    if let Ok(addr) = raw.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Some(port) = raw.strip_prefix("localhost:") {
        if let Ok(port) = port.parse::<u16>() {
            return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
        }
    }
    Err(format!(
        "must be IP:PORT such as 127.0.0.1:9490 or [::1]:9490 (got {raw:?})"
    ))
}
