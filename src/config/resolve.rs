//! Precedence, written once: flag > environment > file > default, per key.
//!
//! Every key goes through [`resolve`]. Each source offers the key's value in the key's
//! raw form ([`Found`]), or says why it cannot (`BBCRAWL_MAX_IN_FLIGHT=lots` is not a
//! number); the highest source that sets the key wins, and only the winner is
//! validated, by the key's own parser. So a flag overrides a broken environment
//! variable, as a user expects, and every error names the key and where its value
//! came from ([`Origin`]).

use std::fmt;
use std::path::PathBuf;

use super::error::ConfigError;
use super::values::split_list;

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
pub(super) enum Origin {
    /// A command-line flag (`--store`).
    Flag(&'static str),
    /// An environment variable (`BBCRAWL_STORE`).
    Env(&'static str),
    /// The config file or a secret file, by path.
    File(PathBuf),
    /// No source set the key.
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

/// [`ConfigError::Invalid`] for `key`, set by `origin`.
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

/// Why a value was refused. The key and origin are added by [`resolve`], so parsers
/// only say what is wrong.
#[derive(Debug)]
pub(super) struct Refusal {
    /// For a list, which entry is wrong: the error then names `key[entry]`.
    entry: Option<usize>,
    /// What is wrong and what is accepted.
    message: String,
}

impl Refusal {
    /// Entry `index` of a list value is wrong.
    pub(super) fn entry(index: usize, message: impl Into<String>) -> Refusal {
        Refusal {
            entry: Some(index),
            message: message.into(),
        }
    }

    /// The error for `key` whose value came from `origin`.
    fn at(self, key: &str, origin: &Origin) -> ConfigError {
        let key = match self.entry {
            Some(index) => format!("{key}[{index}]"),
            None => key.to_string(),
        };
        invalid(key, origin, self.message)
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal {
            entry: None,
            message,
        }
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Refusal {
        Refusal::from(message.to_string())
    }
}

/// A key's value as one source states it, before validation: `R` is the key's raw
/// form shared by all its sources (text, a list, an `i64`), or the reason this source's
/// value cannot be read as one.
pub(super) struct Found<R> {
    origin: Origin,
    raw: Result<R, Refusal>,
}

impl<R> Found<R> {
    /// A value set by `origin`.
    pub(super) fn new(origin: Origin, raw: R) -> Found<R> {
        Found {
            origin,
            raw: Ok(raw),
        }
    }

    /// A value `origin` sets but that cannot be read as the key's raw form
    /// (reported only if this source wins).
    pub(super) fn refused(origin: Origin, refusal: impl Into<Refusal>) -> Found<R> {
        Found {
            origin,
            raw: Err(refusal.into()),
        }
    }

    /// The flag `name`, if it was given.
    pub(super) fn flag(name: &'static str, value: Option<R>) -> Option<Found<R>> {
        value.map(|raw| Found::new(Origin::Flag(name), raw))
    }

    /// Converts the raw value (`BBCRAWL_INCLUDE`'s text to a list).
    pub(super) fn map<S>(self, convert: impl FnOnce(R) -> S) -> Found<S> {
        Found {
            origin: self.origin,
            raw: self.raw.map(convert),
        }
    }

    /// Converts the raw value when that can fail (text to a number); the failure is
    /// reported only if this source wins.
    pub(super) fn and_then<S>(self, convert: impl FnOnce(R) -> Result<S, Refusal>) -> Found<S> {
        Found {
            origin: self.origin,
            raw: self.raw.and_then(convert),
        }
    }
}

/// The value of `key`: from the highest-precedence source that sets it — `flag`, else
/// `env`, else `file` — checked by `parse`; `default` when none sets it. An error names
/// `key` (or `key[N]` for a list entry) and the source of the value.
pub(super) fn resolve<R, T>(
    key: &str,
    flag: Option<Found<R>>,
    env: Option<Found<R>>,
    file: Option<Found<R>>,
    default: T,
    parse: impl FnOnce(R) -> Result<T, Refusal>,
) -> Result<T, ConfigError> {
    let Some(Found { origin, raw }) = flag.or(env).or(file) else {
        return Ok(default);
    };
    raw.and_then(parse)
        .map_err(|refusal| refusal.at(key, &origin))
}

/// The environment lookup, with "set but empty" treated as unset and values trimmed.
pub(super) struct Env<'a>(pub(super) &'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// The variable's trimmed value, if it is set and not blank.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    /// The variable `name` as a source of a key's value.
    pub(super) fn found(&self, name: &'static str) -> Option<Found<String>> {
        self.get(name)
            .map(|value| Found::new(Origin::Env(name), value))
    }

    /// A comma-separated variable as a source of a list key (see [`split_list`]).
    pub(super) fn list(&self, name: &'static str) -> Option<Found<Vec<String>>> {
        self.found(name).map(|f| f.map(|value| split_list(&value)))
    }
}
