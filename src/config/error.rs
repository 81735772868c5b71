//! [`ConfigError`]: why the configuration could not be loaded. Every variant is exit
//! code 2, and no variant's message contains a secret.

use std::path::PathBuf;

use super::file::FileReadError;
/// Why the configuration could not be loaded. The binary maps every variant to exit
/// code 2. No variant's message contains a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is malformed or out of range. `origin` says where it came from
    /// (`from BBCRAWL_REQUESTS_PER_HOUR`, `from --store`, `from /etc/bbcrawl.toml`).
    #[error("invalid value for `{key}` ({origin}): {message}")]
    Invalid {
        /// The config key (`requests_per_hour`, `credentials[0].username`) or, for
        /// settings that exist only in the environment, the variable name.
        key: String,
        /// Where the value came from, as `from …`.
        origin: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// The config file could not be read, or was refused unread (see [`read_small_file`](super::read_small_file)).
    #[error("cannot read config file {} (from {key}): {source}", path.display())]
    ReadFile {
        /// The flag or variable that names the file: `--config` or `BBCRAWL_CONFIG`.
        key: String,
        /// The config file.
        path: PathBuf,
        /// Why it was not read.
        source: FileReadError,
    },
    /// The config file is not valid TOML or a value has the wrong type.
    ///
    /// The TOML library's source snippet is dropped and literal values are removed from
    /// type errors, because the offending line may hold a token; the key, line and
    /// column are kept.
    #[error("cannot parse config file {}{}: {message}", path.display(), location(*line, *column, key.as_deref()))]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line of the error, when known.
        line: Option<usize>,
        /// 1-based column of the error, when known.
        column: Option<usize>,
        /// The key on the offending line (`page_size`, `credentials[1].password`), when
        /// there is one.
        key: Option<String>,
        /// The parser's explanation.
        message: String,
    },
    /// The config file has a key this version does not know (probably a typo).
    #[error("unknown key `{key}` in {}{}: check its spelling (config/bbcrawl.example.toml lists every key)", path.display(), location(*line, None, None))]
    UnknownKey {
        /// The unknown key, qualified (`credentials[0].tokn`) when inside a table.
        key: String,
        /// The config file.
        path: PathBuf,
        /// 1-based line, when known.
        line: Option<usize>,
    },
    /// The config file holds a secret inline but group or others may read it.
    #[error(
        "refusing config file {}: it holds a secret inline (`{key}`) and is readable by group or others (mode {mode:03o}); run `chmod 600 {}` or put the secret in its own file and use `{}_file`",
        path.display(), path.display(), key.rsplit('.').next().unwrap_or(key)
    )]
    InsecureFile {
        /// The config file.
        path: PathBuf,
        /// The first inline secret found (`credentials[0].access_token`).
        key: String,
        /// The file's permission bits.
        mode: u32,
    },
    /// A `*_file` secret could not be read, or was refused unread (see [`read_small_file`](super::read_small_file)).
    #[error("cannot read `{key}` secret file {}: {source}", path.display())]
    SecretFile {
        /// The key or variable that names the file (`credentials[0].access_token_file`,
        /// `BITBUCKET_ACCESS_TOKEN_FILE`).
        key: String,
        /// The secret file, resolved.
        path: PathBuf,
        /// Why it was not read.
        source: FileReadError,
    },
}

impl ConfigError {
    /// The key (or environment variable) the error is about, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. }
            | ConfigError::ReadFile { key, .. }
            | ConfigError::UnknownKey { key, .. }
            | ConfigError::InsecureFile { key, .. }
            | ConfigError::SecretFile { key, .. } => Some(key),
            ConfigError::Parse { key, .. } => key.as_deref(),
        }
    }
}

/// Formats ` at line L, column C (key `k`)` for parse errors; empty when nothing is known.
fn location(line: Option<usize>, column: Option<usize>, key: Option<&str>) -> String {
    let mut out = String::new();
    if let Some(line) = line {
        out.push_str(&format!(" at line {line}"));
        if let Some(column) = column {
            out.push_str(&format!(", column {column}"));
        }
    }
    if let Some(key) = key {
        out.push_str(&format!(" (key `{key}`)"));
    }
    out
}
