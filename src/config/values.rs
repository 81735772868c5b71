//! What each key accepts: workspace names and URLs, API base URLs, listen addresses,
//! dates, integer ranges, comma-separated lists.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use chrono::{DateTime, NaiveDate, Utc};
use url::Url;

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

/// Description of an integer key: its names in each source and its range.
pub(super) struct IntKey {
    pub(super) key: &'static str,
    pub(super) flag: Option<&'static str>,
    pub(super) env: Option<&'static str>,
    pub(super) min: i64,
    pub(super) max: i64,
}

impl IntKey {
    /// A key that only the config file sets (SPEC: no environment variable).
    pub(super) fn file_only(key: &'static str, min: i64, max: i64) -> IntKey {
        IntKey {
            key,
            flag: None,
            env: None,
            min,
            max,
        }
    }

    /// What is wrong with `got`, which is above the range when `too_large` and below it
    /// otherwise. A range chosen for the key is given whole; a key whose maximum is only
    /// its type's names the bound that was crossed (a message saying "at least 1" about
    /// 4294967296 would send the user the wrong way).
    pub(super) fn out_of_range(&self, too_large: bool, got: &str) -> String {
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
