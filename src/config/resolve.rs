//! Precedence: flag > environment > file > default, per key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use super::error::ConfigError;
use super::file::{FileConfig, LoadedFile};
use super::values::{
    parse_api_url, parse_listen, parse_since, parse_workspace, split_list, IntKey,
};
use super::{Overrides, DEFAULT_API_URL, DEFAULT_LISTEN};

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
pub(super) enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File(PathBuf),
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(flag) => write!(f, "from {flag}"),
            Origin::Env(var) => write!(f, "from {var}"),
            Origin::File(path) => write!(f, "from {}", path.display()),
            Origin::Default => f.write_str("built-in default"),
        }
    }
}

pub(super) fn invalid(
    key: impl Into<String>,
    origin: &Origin,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        origin: origin.to_string(),
        message: message.into(),
    }
}

/// The environment lookup, with "set but empty" treated as unset and values trimmed.
pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
}

pub(super) fn check_path(key: &str, origin: &Origin, path: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(key, origin, "must not be empty"));
    }
    Ok(path.to_path_buf())
}

pub(super) fn resolve_workspaces(
    overrides: &Overrides,
    env: &Env<'_>,
    file: Option<&LoadedFile>,
) -> Result<Vec<String>, ConfigError> {
    // Each source yields (origin, raw names); the first non-empty source wins.
    let (origin, raw): (Origin, Vec<String>) = if !overrides.workspaces.is_empty() {
        (
            Origin::Flag("--workspace"),
            overrides
                .workspaces
                .iter()
                .flat_map(|w| split_list(w))
                .collect(),
        )
    } else if let Some(value) = env.get("BBCRAWL_WORKSPACES") {
        (Origin::Env("BBCRAWL_WORKSPACES"), split_list(&value))
    } else if let Some((f, list)) = file.and_then(|f| f.values.workspaces.as_ref().map(|l| (f, l)))
    {
        (f.origin(), list.clone())
    } else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = Vec::new();
    for entry in raw {
        let name =
            parse_workspace(&entry).map_err(|message| invalid("workspaces", &origin, message))?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

pub(super) fn resolve_api_url(
    overrides: &Overrides,
    env: &Env<'_>,
    file: Option<&LoadedFile>,
) -> Result<Url, ConfigError> {
    let (origin, raw) = if let Some(url) = &overrides.api_url {
        (Origin::Flag("--api-url"), url.clone())
    } else if let Some(url) = env.get("BBCRAWL_API_URL") {
        (Origin::Env("BBCRAWL_API_URL"), url)
    } else if let Some((f, url)) = file.and_then(|f| f.values.api_url.as_ref().map(|u| (f, u))) {
        (f.origin(), url.clone())
    } else {
        // The default is a valid constant; it goes through the same normalisation.
        (Origin::Default, DEFAULT_API_URL.to_string())
    };
    parse_api_url(&raw).map_err(|message| invalid("api_url", &origin, message))
}

pub(super) fn resolve_patterns(
    key: &'static str,
    env_name: &'static str,
    env: &Env<'_>,
    file: Option<&LoadedFile>,
    field: impl Fn(&FileConfig) -> Option<&Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    if let Some(value) = env.get(env_name) {
        return Ok(split_list(&value));
    }
    let Some((f, list)) = file.and_then(|f| field(&f.values).map(|l| (f, l))) else {
        return Ok(Vec::new());
    };
    let mut patterns = Vec::with_capacity(list.len());
    for (i, pattern) in list.iter().enumerate() {
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(invalid(
                format!("{key}[{i}]"),
                &f.origin(),
                "a pattern must not be empty",
            ));
        }
        patterns.push(pattern.to_string());
    }
    Ok(patterns)
}

pub(super) fn resolve_since(
    env: &Env<'_>,
    file: Option<&LoadedFile>,
) -> Result<Option<DateTime<Utc>>, ConfigError> {
    let (origin, raw) = if let Some(value) = env.get("BBCRAWL_SINCE") {
        (Origin::Env("BBCRAWL_SINCE"), value)
    } else if let Some((f, value)) = file.and_then(|f| f.values.since.as_ref().map(|v| (f, v))) {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            // An unquoted TOML date or date-time; its Display is RFC 3339 shaped.
            toml::Value::Datetime(dt) => dt.to_string(),
            _ => {
                return Err(invalid(
                    "since",
                    &f.origin(),
                    "must be a date (YYYY-MM-DD) or an RFC 3339 date-time",
                ))
            }
        };
        (f.origin(), text)
    } else {
        return Ok(None);
    };
    parse_since(&raw)
        .map(Some)
        .map_err(|message| invalid("since", &origin, message))
}

/// The value of an integer key from the highest-precedence source, range-checked;
/// `None` when no source sets it (the caller applies the default).
pub(super) fn resolve_int<T: TryFrom<i64>>(
    spec: &IntKey,
    flag: Option<i64>,
    env: &Env<'_>,
    file: Option<&LoadedFile>,
    file_value: Option<i64>,
) -> Result<Option<T>, ConfigError> {
    let (origin, value) = if let (Some(value), Some(flag_name)) = (flag, spec.flag) {
        (Origin::Flag(flag_name), value)
    } else if let Some((name, text)) = spec.env.and_then(|name| env.get(name).map(|t| (name, t))) {
        let origin = Origin::Env(name);
        let value = text.parse::<i64>().map_err(|e| {
            // Digits beyond i64 are a number too large, not "not a number".
            let message = match e.kind() {
                std::num::IntErrorKind::PosOverflow => spec.out_of_range(true, &text),
                std::num::IntErrorKind::NegOverflow => spec.out_of_range(false, &text),
                _ => format!("must be a whole number (got {text:?})"),
            };
            invalid(spec.key, &origin, message)
        })?;
        (origin, value)
    } else if let (Some(value), Some(f)) = (file_value, file) {
        (f.origin(), value)
    } else {
        return Ok(None);
    };
    if value < spec.min || value > spec.max {
        let message = spec.out_of_range(value > spec.max, &value.to_string());
        return Err(invalid(spec.key, &origin, message));
    }
    // Every key's range fits its target type, so this only fails if a range is
    // declared wider than the type; it still reports rather than truncates.
    T::try_from(value).map(Some).map_err(|_| {
        let message = spec.out_of_range(value > 0, &value.to_string());
        invalid(spec.key, &origin, message)
    })
}

pub(super) fn resolve_seconds(
    spec: &IntKey,
    env: &Env<'_>,
    file: Option<&LoadedFile>,
    file_value: Option<i64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let seconds: Option<u64> = resolve_int(spec, None, env, file, file_value)?;
    Ok(Duration::from_secs(seconds.unwrap_or(default)))
}

pub(super) fn resolve_listen(
    overrides: &Overrides,
    env: &Env<'_>,
    file: Option<&LoadedFile>,
) -> Result<SocketAddr, ConfigError> {
    let (origin, raw) = if let Some(listen) = &overrides.listen {
        (Origin::Flag("--listen"), listen.clone())
    } else if let Some(listen) = env.get("BBCRAWL_LISTEN") {
        (Origin::Env("BBCRAWL_LISTEN"), listen)
    } else if let Some((f, listen)) = file.and_then(|f| f.values.listen.as_ref().map(|l| (f, l))) {
        (f.origin(), listen.clone())
    } else {
        return Ok(DEFAULT_LISTEN);
    };
    parse_listen(&raw).map_err(|message| invalid("listen", &origin, message))
}
