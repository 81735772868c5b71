//! Configuration: TOML file + environment + flags → one validated [`Config`].
//!
//! SPEC.md section 2 is the contract: every key, its environment variable and its
//! default. This module is the only place that reads the config file, the `BBCRAWL_*`
//! and `BITBUCKET_*` variables and the secret files; everything downstream gets a
//! [`Config`] whose values are already checked, so no other layer re-validates.
//!
//! Decisions the SPEC leaves open, made here once:
//! - **Precedence is per key**: flag > environment > file > default. A `--store` flag
//!   does not stop `BBCRAWL_REQUESTS_PER_HOUR` from applying.
//! - **An environment variable that is set but empty (or only whitespace) counts as
//!   unset**, because `BBCRAWL_STORE= bbcrawl sync` and `${VAR:-}` in unit files are
//!   how people clear a variable. Values are trimmed.
//! - **A credential in the environment replaces the file's credentials** (it does not
//!   add to them), the same way every other environment variable beats the file. The
//!   file's `[[credentials]]` are then not resolved at all (their `*_file` secrets are
//!   not read), so a file written for another machine does not get in the way; a
//!   warning says they were replaced.
//! - **Relative paths in the config file** (`store`, `*_file`) resolve against the
//!   directory of the config file, so a file means the same thing whatever the working
//!   directory; paths from flags and the environment resolve against the working
//!   directory, as a shell user expects.
//! - **Workspace names** are lowercased; see [`parse_workspace`] for the rules.
//! - **Unknown keys are errors**, in the file and inside `[[credentials]]`: a typo
//!   such as `requests_per_hr` must not be silently ignored.
//! - **The config file and secret files are small regular files**: at most
//!   [`MAX_FILE_BYTES`] (1 MiB), never a FIFO, device or directory, so a mistaken
//!   path (`/dev/urandom`, `/dev/stdin`, a pipe) fails at once instead of reading
//!   forever; see [`read_small_file`], which every file a setting names goes through.
//!
//! Secrets are wrapped in [`Secret`] as soon as they are read; its `Debug` and
//! `Display` print `[REDACTED]`, and no error message of this module quotes a value
//! that could be a secret (TOML errors lose their source snippet, see [`ConfigError::Parse`]).

use std::fmt;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Deserialize;
use url::Url;

/// Default `api_url`: the Bitbucket Cloud REST API.
pub const DEFAULT_API_URL: &str = "https://api.bitbucket.org/2.0";
/// Default `store` directory, relative to the working directory.
pub const DEFAULT_STORE: &str = "./bbcrawl-data";
/// Default `listen` address: loopback, so metrics and the query API are not exposed.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9490);
/// Default `requests_per_hour`: Bitbucket's repository-data allowance per credential.
pub const DEFAULT_REQUESTS_PER_HOUR: u32 = 1000;
/// Default `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Default `page_size` (the largest `pagelen` Bitbucket reliably serves).
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Default `connect_timeout_seconds`.
pub const DEFAULT_CONNECT_TIMEOUT_SECONDS: u64 = 10;
/// Default `request_timeout_seconds`.
pub const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 60;
/// Default `max_retries`.
pub const DEFAULT_MAX_RETRIES: u32 = 10;
/// Default `interval_seconds`: 15 minutes between sync passes.
pub const DEFAULT_INTERVAL_SECONDS: u64 = 900;
/// Default `audit_interval_seconds`: every repository's head is checked daily.
pub const DEFAULT_AUDIT_INTERVAL_SECONDS: u64 = 86_400;

/// Environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "BBCRAWL_CONFIG";

/// The longest duration any `*_seconds` key accepts (one year). Far larger values are
/// certainly typos, and keeping durations bounded means `Instant + duration` can never
/// overflow in the layers that sleep or time out.
const MAX_SECONDS: i64 = 365 * 24 * 3600;

/// Above this many concurrent requests a single process only runs into the rate limit
/// faster; the bound catches a misplaced digit.
const MAX_IN_FLIGHT_LIMIT: i64 = 1024;

/// Retrying more often than this cannot help a transient error and burns the hourly budget.
const MAX_RETRIES_LIMIT: i64 = 100;

/// The largest config or secret file bbcrawl reads: 1 MiB. Real ones are a few hundred
/// bytes; the bound keeps a mistaken path (`/dev/urandom`, a log file) from filling memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// A secret string (token or password).
///
/// `Debug` and `Display` print `[REDACTED]` so that a secret cannot leak through a log
/// line, an error or a panic message; the only way to the value is [`Secret::expose`],
/// which the HTTP client calls when it builds the `Authorization` header. It
/// deliberately implements neither `Serialize` nor `Deserialize`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret value itself. Call it only where the value must go on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// One way to authenticate to Bitbucket Cloud. Each credential has its own request budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// Workspace, project or repository access token, sent as `Authorization: Bearer`.
    AccessToken {
        /// The token.
        token: Secret,
    },
    /// Atlassian API token, sent as HTTP Basic `email:token`.
    ApiToken {
        /// The Atlassian account e-mail (Bitbucket rejects the Bitbucket username here).
        email: String,
        /// The token.
        token: Secret,
    },
    /// Legacy app password, sent as HTTP Basic `username:password`.
    ///
    /// Deprecated: Bitbucket removed app passwords on 2026-07-28. Loading one adds a
    /// warning to [`Config::warnings`].
    AppPassword {
        /// The Bitbucket username (an e-mail does not work with app passwords).
        username: String,
        /// The app password.
        password: Secret,
    },
}

impl Credential {
    /// Which kind of credential this is.
    pub fn kind(&self) -> CredentialKind {
        match self {
            Credential::AccessToken { .. } => CredentialKind::AccessToken,
            Credential::ApiToken { .. } => CredentialKind::ApiToken,
            Credential::AppPassword { .. } => CredentialKind::AppPassword,
        }
    }

    /// A non-secret label for logs: `access token`, `API token dev@example.com`,
    /// `app password sim-user`.
    ///
    /// The credential does not know its position in [`Config::credentials`]; access
    /// tokens carry no name, so callers that log several of them should use
    /// [`Credential::numbered_label`] to tell them apart.
    pub fn label(&self) -> String {
        match self {
            Credential::AccessToken { .. } => "access token".to_string(),
            Credential::ApiToken { email, .. } => format!("API token {email}"),
            Credential::AppPassword { username, .. } => format!("app password {username}"),
        }
    }

    /// Like [`Credential::label`], with the credential's position for access tokens:
    /// `index` is the 0-based index in [`Config::credentials`] and is printed 1-based
    /// (`access token #1`). The other kinds are already named by their user.
    pub fn numbered_label(&self, index: usize) -> String {
        match self {
            Credential::AccessToken { .. } => format!("access token #{}", index + 1),
            _ => self.label(),
        }
    }
}

/// The kind of a [`Credential`], without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialKind {
    /// Workspace, project or repository access token (Bearer).
    AccessToken,
    /// Atlassian API token (Basic with the account e-mail).
    ApiToken,
    /// Legacy app password (Basic with the Bitbucket username).
    AppPassword,
}

/// The validated configuration every command runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Workspace names, lowercased, URL forms reduced to their first path segment,
    /// duplicates removed (order kept). May be empty: commands that talk to the API
    /// check that themselves.
    pub workspaces: Vec<String>,
    /// API base URL; `https`, or `http` to a loopback host only.
    ///
    /// Normal form: no query, no fragment, no user info, and the path has no trailing
    /// `/` unless it is the root `/` itself (the `url` crate always keeps that one).
    /// Build endpoints with [`Config::api_base`], which is the same string without any
    /// trailing `/`: `format!("{}/repositories/{ws}", config.api_base())`.
    pub api_url: Url,
    /// Store directory.
    pub store: PathBuf,
    /// Glob patterns on repository slugs to crawl; empty means all.
    pub include: Vec<String>,
    /// Glob patterns on repository slugs to skip.
    pub exclude: Vec<String>,
    /// Do not fetch commits older than this on a first crawl.
    pub since: Option<DateTime<Utc>>,
    /// Request budget per credential per rolling hour (at least 1).
    pub requests_per_hour: u32,
    /// Concurrent API requests in total (1..=1024).
    pub max_in_flight: usize,
    /// `pagelen` for commits and repositories (10..=100).
    pub page_size: u32,
    /// TCP/TLS connect timeout per request.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub request_timeout: Duration,
    /// Retries per request for transient errors (0..=100).
    pub max_retries: u32,
    /// Address of the daemon's HTTP endpoint.
    pub listen: SocketAddr,
    /// Pause between sync passes in `run`.
    pub interval: Duration,
    /// Every repository's head is checked at least this often.
    pub audit_interval: Duration,
    /// Credentials, in file order (or the single one from the environment). May be
    /// empty: commands that need the API check that themselves.
    pub credentials: Vec<Credential>,
    /// Things the user should know but that do not stop the program (app-password
    /// deprecation, a non-loopback `listen`, replaced credentials). The binary logs them.
    pub warnings: Vec<String>,
}

impl Config {
    /// The API base URL as a string without a trailing `/`, ready for
    /// `format!("{}/repositories/{workspace}", config.api_base())`.
    pub fn api_base(&self) -> &str {
        self.api_url.as_str().trim_end_matches('/')
    }
}

/// What the command line supplies. Every field is optional; a set field beats the
/// environment and the file for its key.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--config`; else `BBCRAWL_CONFIG`; else no file is read.
    pub config_path: Option<PathBuf>,
    /// `--store`.
    pub store: Option<PathBuf>,
    /// `--workspace` (repeatable; each may also be comma-separated). When non-empty it
    /// replaces the workspaces of the environment and the file.
    pub workspaces: Vec<String>,
    /// `--api-url`.
    pub api_url: Option<String>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--requests-per-hour`.
    pub requests_per_hour: Option<u32>,
}

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
    /// The config file could not be read, or was refused unread (see [`read_small_file`]).
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
    /// A `*_file` secret could not be read, or was refused unread (see [`read_small_file`]).
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

/// Why [`read_small_file`] did not return a file's text. No variant quotes the content.
#[derive(Debug, thiserror::Error)]
pub enum FileReadError {
    /// Inspecting, opening or reading the file failed (missing, no permission, …).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The path names something other than a regular file; reading it could block
    /// forever (a FIFO, a terminal) or never end (`/dev/urandom`).
    #[error("it is {kind}, not a regular file: config and secret files must be regular files (pipes, devices, /dev/stdin and <(…) are not supported; a systemd LoadCredential= file is fine)")]
    NotRegular {
        /// What it is instead: `a directory`, `a FIFO (named pipe)`, `a character device`, ….
        kind: &'static str,
    },
    /// The file holds more than the limit.
    #[error("it is larger than {}: config and secret files are small text files", size_text(*limit))]
    TooLarge {
        /// The limit in bytes ([`MAX_FILE_BYTES`] for config and secret files).
        limit: u64,
    },
    /// The file is not UTF-8 text.
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

/// `1 MiB`, `512 KiB` or `1000 bytes`.
fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Reads a small UTF-8 text file (the config file, a secret file, and any other file a
/// setting names) without trusting what the path names: only a regular file, and only
/// up to `limit` bytes, so a mistaken path fails at once with [`FileReadError`].
///
/// The type is checked before opening, because opening a FIFO for reading blocks until a
/// writer appears; the opened file is checked again (the path may have been replaced
/// meanwhile), and it is read through `take(limit + 1)`, so a file that grows while being
/// read, or one that reports a size of 0 (as `/proc` files do), is still bounded.
pub fn read_small_file(path: &Path, limit: u64) -> Result<String, FileReadError> {
    check_small_regular(&std::fs::metadata(path)?, limit)?;
    let file = std::fs::File::open(path)?;
    check_small_regular(&file.metadata()?, limit)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).map_or(true, |n| n > limit) {
        return Err(FileReadError::TooLarge { limit });
    }
    String::from_utf8(bytes).map_err(|_| FileReadError::NotUtf8)
}

/// A regular file of at most `limit` bytes, as far as its metadata tells.
fn check_small_regular(metadata: &std::fs::Metadata, limit: u64) -> Result<(), FileReadError> {
    if !metadata.is_file() {
        return Err(FileReadError::NotRegular {
            kind: file_kind(&metadata.file_type()),
        });
    }
    if metadata.len() > limit {
        return Err(FileReadError::TooLarge { limit });
    }
    Ok(())
}

/// What a non-regular file is, for [`FileReadError::NotRegular`].
fn file_kind(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    "a special file"
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

/// Where a value came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
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

fn invalid(key: impl Into<String>, origin: &Origin, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        origin: origin.to_string(),
        message: message.into(),
    }
}

/// The config file as written. Every field is optional so that defaults and the other
/// sources can fill in; numbers are `i64` (TOML's integer type) so that range errors
/// come from our checks, which name the key, rather than from serde.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    workspaces: Option<Vec<String>>,
    api_url: Option<String>,
    store: Option<PathBuf>,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    /// A string, or a TOML date / offset date-time written without quotes.
    since: Option<toml::Value>,
    requests_per_hour: Option<i64>,
    max_in_flight: Option<i64>,
    page_size: Option<i64>,
    connect_timeout_seconds: Option<i64>,
    request_timeout_seconds: Option<i64>,
    max_retries: Option<i64>,
    listen: Option<String>,
    interval_seconds: Option<i64>,
    audit_interval_seconds: Option<i64>,
    #[serde(default)]
    credentials: Vec<FileCredential>,
}

/// One `[[credentials]]` table as written; which combination is valid is checked later
/// so that the error can name `credentials[N]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredential {
    access_token: Option<FileSecret>,
    access_token_file: Option<PathBuf>,
    username: Option<String>,
    api_token: Option<FileSecret>,
    api_token_file: Option<PathBuf>,
    password: Option<FileSecret>,
    password_file: Option<PathBuf>,
}

/// An inline secret in the file. Its own `Deserialize` so that a secret of the wrong
/// type (`access_token = 12345`) gives an error that does not quote the value, as
/// serde's default "invalid type: integer `12345`" would.
#[derive(Debug)]
struct FileSecret(Secret);

impl<'de> Deserialize<'de> for FileSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(deserializer)? {
            toml::Value::String(s) => Ok(FileSecret(Secret::new(s))),
            _ => Err(serde::de::Error::custom(
                "a secret must be a string (the value is not shown)",
            )),
        }
    }
}

/// The parsed config file and where it lives.
struct LoadedFile {
    path: PathBuf,
    /// Directory that relative paths in the file resolve against.
    dir: PathBuf,
    values: FileConfig,
}

impl LoadedFile {
    fn origin(&self) -> Origin {
        Origin::File(self.path.clone())
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }
}

impl Config {
    /// Loads the configuration from the flags, the real process environment, the config
    /// file (if any) and the defaults.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        // Non-UTF-8 values are converted lossily rather than ignored, so that a broken
        // value fails validation with its key named instead of silently falling back.
        let env = |name: &str| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned());
        Config::load_with_env(overrides, &env)
    }

    /// Like [`Config::load`], with the environment given as a lookup function, so that
    /// tests never need to mutate the process environment.
    pub fn load_with_env(
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let env = Env(env);
        let config_path = match &overrides.config_path {
            Some(path) => Some(("--config", path.clone())),
            None => env
                .get(CONFIG_ENV)
                .map(|path| (CONFIG_ENV, PathBuf::from(path))),
        };
        let file = match config_path {
            Some((key, path)) => Some(read_file(key, &path)?),
            None => None,
        };
        let file = file.as_ref();
        let values = file.map(|f| &f.values);
        let mut warnings = Vec::new();

        let workspaces = resolve_workspaces(overrides, &env, file)?;
        let api_url = resolve_api_url(overrides, &env, file)?;

        let store = if let Some(store) = &overrides.store {
            check_path("store", &Origin::Flag("--store"), store)?
        } else if let Some(store) = env.get("BBCRAWL_STORE") {
            PathBuf::from(store)
        } else if let Some((f, store)) = file.and_then(|f| f.values.store.as_ref().map(|s| (f, s)))
        {
            f.resolve(&check_path("store", &f.origin(), store)?)
        } else {
            PathBuf::from(DEFAULT_STORE)
        };

        let include = resolve_patterns("include", "BBCRAWL_INCLUDE", &env, file, |v| {
            v.include.as_ref()
        })?;
        let exclude = resolve_patterns("exclude", "BBCRAWL_EXCLUDE", &env, file, |v| {
            v.exclude.as_ref()
        })?;
        let since = resolve_since(&env, file)?;

        let requests_per_hour = resolve_int(
            &IntKey {
                key: "requests_per_hour",
                flag: Some("--requests-per-hour"),
                env: Some("BBCRAWL_REQUESTS_PER_HOUR"),
                min: 1,
                max: i64::from(u32::MAX),
            },
            overrides.requests_per_hour.map(i64::from),
            &env,
            file,
            values.and_then(|v| v.requests_per_hour),
        )?
        .unwrap_or(DEFAULT_REQUESTS_PER_HOUR);
        let max_in_flight = resolve_int(
            &IntKey {
                key: "max_in_flight",
                flag: None,
                env: Some("BBCRAWL_MAX_IN_FLIGHT"),
                min: 1,
                max: MAX_IN_FLIGHT_LIMIT,
            },
            None,
            &env,
            file,
            values.and_then(|v| v.max_in_flight),
        )?
        .unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        let page_size = resolve_int(
            &IntKey::file_only("page_size", 10, 100),
            None,
            &env,
            file,
            values.and_then(|v| v.page_size),
        )?
        .unwrap_or(DEFAULT_PAGE_SIZE);
        let max_retries = resolve_int(
            &IntKey::file_only("max_retries", 0, MAX_RETRIES_LIMIT),
            None,
            &env,
            file,
            values.and_then(|v| v.max_retries),
        )?
        .unwrap_or(DEFAULT_MAX_RETRIES);
        let connect_timeout = resolve_seconds(
            &IntKey::file_only("connect_timeout_seconds", 1, MAX_SECONDS),
            &env,
            file,
            values.and_then(|v| v.connect_timeout_seconds),
            DEFAULT_CONNECT_TIMEOUT_SECONDS,
        )?;
        let request_timeout = resolve_seconds(
            &IntKey::file_only("request_timeout_seconds", 1, MAX_SECONDS),
            &env,
            file,
            values.and_then(|v| v.request_timeout_seconds),
            DEFAULT_REQUEST_TIMEOUT_SECONDS,
        )?;
        let interval = resolve_seconds(
            &IntKey {
                key: "interval_seconds",
                flag: None,
                env: Some("BBCRAWL_INTERVAL_SECONDS"),
                min: 1,
                max: MAX_SECONDS,
            },
            &env,
            file,
            values.and_then(|v| v.interval_seconds),
            DEFAULT_INTERVAL_SECONDS,
        )?;
        let audit_interval = resolve_seconds(
            &IntKey {
                key: "audit_interval_seconds",
                flag: None,
                env: Some("BBCRAWL_AUDIT_INTERVAL_SECONDS"),
                min: 1,
                max: MAX_SECONDS,
            },
            &env,
            file,
            values.and_then(|v| v.audit_interval_seconds),
            DEFAULT_AUDIT_INTERVAL_SECONDS,
        )?;

        let listen = resolve_listen(overrides, &env, file)?;
        if !listen.ip().is_loopback() {
            warnings.push(format!(
                "listen address {listen} is not loopback: metrics, health and the query API are reachable from the network"
            ));
        }

        let credentials = resolve_credentials(&env, file, &mut warnings)?;

        Ok(Config {
            workspaces,
            api_url,
            store,
            include,
            exclude,
            since,
            requests_per_hour,
            max_in_flight,
            page_size,
            connect_timeout,
            request_timeout,
            max_retries,
            listen,
            interval,
            audit_interval,
            credentials,
            warnings,
        })
    }
}

/// The environment lookup, with "set but empty" treated as unset and values trimmed.
struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }
}

/// Reads, parses and permission-checks the config file; `key` is the flag or variable
/// that named it.
fn read_file(key: &str, path: &Path) -> Result<LoadedFile, ConfigError> {
    let text = read_small_file(path, MAX_FILE_BYTES).map_err(|source| ConfigError::ReadFile {
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    })?;
    let values: FileConfig = toml::from_str(&text).map_err(|e| parse_error(path, &text, &e))?;
    check_permissions(key, path, &values)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        // A bare file name lives in the working directory.
        _ => PathBuf::from("."),
    };
    Ok(LoadedFile {
        path: path.to_path_buf(),
        dir,
        values,
    })
}

/// Turns a TOML error into [`ConfigError::Parse`] or [`ConfigError::UnknownKey`]
/// without the source snippet (the offending line may hold a token) and without the
/// literal value serde quotes in type errors.
fn parse_error(path: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let (line, column, key) = match error.span() {
        Some(span) => {
            let (line, column) = line_column(text, span.start);
            (Some(line), Some(column), key_on_line(text, line))
        }
        None => (None, None, None),
    };
    let message = error.message().trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some(field) = rest.split('`').next() {
            let key = match table_prefix(text, line) {
                Some(prefix) => format!("{prefix}.{field}"),
                None => field.to_string(),
            };
            return ConfigError::UnknownKey {
                key,
                path: path.to_path_buf(),
                line,
            };
        }
    }
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        column,
        key,
        message: redact_literal(message),
    }
}

/// serde type errors read `invalid type: string "abc", expected …`; keep the kind and
/// the expectation, drop the literal, which could be a secret in the wrong place.
fn redact_literal(message: &str) -> String {
    let one_line = message
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = one_line.strip_prefix(prefix) {
            if let Some(pos) = rest.find(", expected ") {
                let unexpected = &rest[..pos];
                let kind = unexpected.split([' ', '`']).next().unwrap_or("value");
                return format!("{prefix}{kind}{}", &rest[pos..]);
            }
        }
    }
    one_line
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The key written on a 1-based line (`key = …`), qualified with `credentials[N]` when
/// the line is inside a `[[credentials]]` table. Only the part before `=` is looked at,
/// so the value (maybe a secret) never reaches the message.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let content = text.lines().nth(line.checked_sub(1)?)?;
    let (key, _) = content.split_once('=')?;
    let key = key.trim();
    let plausible = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !plausible {
        return None;
    }
    Some(match table_prefix(text, Some(line)) {
        Some(prefix) => format!("{prefix}.{key}"),
        None => key.to_string(),
    })
}

/// `credentials[N]` when the 1-based line is inside the N-th `[[credentials]]` table.
fn table_prefix(text: &str, line: Option<usize>) -> Option<String> {
    let line = line?;
    let mut count = 0usize;
    let mut in_credentials = false;
    for content in text.lines().take(line) {
        let trimmed = content.trim();
        if trimmed.starts_with('[') {
            in_credentials = trimmed.starts_with("[[credentials]]");
            if in_credentials {
                count += 1;
            }
        }
    }
    in_credentials.then(|| format!("credentials[{}]", count - 1))
}

/// Refuses a config file with an inline secret that group or others can read, as ssh
/// refuses an unprotected key. Only unix has the mode bits to check. `named_by` is the
/// flag or variable that gave the path.
fn check_permissions(named_by: &str, path: &Path, values: &FileConfig) -> Result<(), ConfigError> {
    let inline = values.credentials.iter().enumerate().find_map(|(i, c)| {
        let key = if c.access_token.is_some() {
            "access_token"
        } else if c.api_token.is_some() {
            "api_token"
        } else if c.password.is_some() {
            "password"
        } else {
            return None;
        };
        Some(format!("credentials[{i}].{key}"))
    });
    let Some(key) = inline else {
        return Ok(());
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = std::fs::metadata(path).map_err(|source| ConfigError::ReadFile {
            key: named_by.to_string(),
            path: path.to_path_buf(),
            source: FileReadError::Io(source),
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::InsecureFile {
                path: path.to_path_buf(),
                key,
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = (named_by, path, key);
    Ok(())
}

fn check_path(key: &str, origin: &Origin, path: &Path) -> Result<PathBuf, ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(key, origin, "must not be empty"));
    }
    Ok(path.to_path_buf())
}

fn resolve_workspaces(
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

/// Splits a comma-separated list, trimming entries and skipping empty ones (so that a
/// trailing comma is harmless).
fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn resolve_api_url(
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

/// Parses and normalises an API base URL (see [`Config::api_url`] for the normal form).
fn parse_api_url(raw: &str) -> Result<Url, String> {
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

fn resolve_patterns(
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

fn resolve_since(
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

/// RFC 3339 (`2024-05-01T12:00:00Z`) or a date (`2024-05-01`, midnight UTC).
fn parse_since(raw: &str) -> Result<DateTime<Utc>, String> {
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
struct IntKey {
    key: &'static str,
    flag: Option<&'static str>,
    env: Option<&'static str>,
    min: i64,
    max: i64,
}

impl IntKey {
    /// A key that only the config file sets (SPEC: no environment variable).
    fn file_only(key: &'static str, min: i64, max: i64) -> IntKey {
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
    fn out_of_range(&self, too_large: bool, got: &str) -> String {
        if self.max < i64::from(u32::MAX) {
            format!("must be between {} and {} (got {got})", self.min, self.max)
        } else if too_large {
            format!("must be at most {} (got {got})", self.max)
        } else {
            format!("must be at least {} (got {got})", self.min)
        }
    }
}

/// The value of an integer key from the highest-precedence source, range-checked;
/// `None` when no source sets it (the caller applies the default).
fn resolve_int<T: TryFrom<i64>>(
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

fn resolve_seconds(
    spec: &IntKey,
    env: &Env<'_>,
    file: Option<&LoadedFile>,
    file_value: Option<i64>,
    default: u64,
) -> Result<Duration, ConfigError> {
    let seconds: Option<u64> = resolve_int(spec, None, env, file, file_value)?;
    Ok(Duration::from_secs(seconds.unwrap_or(default)))
}

fn resolve_listen(
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

/// `IP:PORT` (`127.0.0.1:9490`, `[::1]:9490`), or `localhost:PORT` as 127.0.0.1 —
/// no DNS lookup, so loading the config never touches the network.
fn parse_listen(raw: &str) -> Result<SocketAddr, String> {
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

/// Where a credential's secret comes from: inline or a file.
enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

/// Reads a secret, from a file when needed: trimmed (files usually end with a newline)
/// and non-empty. `key` names the setting for errors.
fn read_secret(key: &str, origin: &Origin, source: SecretSource) -> Result<Secret, ConfigError> {
    let (value, origin) = match source {
        SecretSource::Inline(secret) => (secret.expose().trim().to_string(), origin.clone()),
        SecretSource::File(path) => {
            let text = read_small_file(&path, MAX_FILE_BYTES).map_err(|source| {
                ConfigError::SecretFile {
                    key: key.to_string(),
                    path: path.clone(),
                    source,
                }
            })?;
            (text.trim().to_string(), Origin::File(path))
        }
    };
    if value.is_empty() {
        return Err(invalid(key, &origin, "the secret is empty"));
    }
    Ok(Secret::new(value))
}

/// Atlassian API tokens authenticate with the account e-mail; anything else gets a 401
/// that is hard to diagnose, so check the shape up front.
fn looks_like_email(s: &str) -> bool {
    match s.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && !s.chars().any(char::is_whitespace)
        }
        None => false,
    }
}

const APP_PASSWORD_WARNING: &str = "app passwords are deprecated: Bitbucket removed them on 2026-07-28; create an Atlassian API token (read:repository:bitbucket) and use it with your Atlassian account e-mail instead";

fn resolve_credentials(
    env: &Env<'_>,
    file: Option<&LoadedFile>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Credential>, ConfigError> {
    if let Some(credential) = env_credential(env, warnings)? {
        if let Some(f) = file {
            if !f.values.credentials.is_empty() {
                warnings.push(format!(
                    "the BITBUCKET_* credential from the environment replaces the {} credential(s) in {}",
                    f.values.credentials.len(),
                    f.path.display()
                ));
            }
        }
        return Ok(vec![credential]);
    }
    let Some(f) = file else {
        return Ok(Vec::new());
    };
    f.values
        .credentials
        .iter()
        .enumerate()
        .map(|(i, c)| file_credential(f, i, c, warnings))
        .collect()
}

/// Validates one `[[credentials]]` table.
fn file_credential(
    f: &LoadedFile,
    index: usize,
    c: &FileCredential,
    warnings: &mut Vec<String>,
) -> Result<Credential, ConfigError> {
    let name = format!("credentials[{index}]");
    let origin = f.origin();
    let access = pick_secret(
        f,
        &name,
        &c.access_token,
        &c.access_token_file,
        "access_token",
    )?;
    let api = pick_secret(f, &name, &c.api_token, &c.api_token_file, "api_token")?;
    let password = pick_secret(f, &name, &c.password, &c.password_file, "password")?;
    let kinds = [access.is_some(), api.is_some(), password.is_some()]
        .iter()
        .filter(|set| **set)
        .count();
    if kinds == 0 {
        return Err(invalid(
            name,
            &origin,
            "needs one of: `access_token` (or `access_token_file`); `username` + `api_token` (or `api_token_file`); `username` + `password` (or `password_file`)",
        ));
    }
    if kinds > 1 {
        return Err(invalid(
            name,
            &origin,
            "holds more than one kind of credential (access token, API token, app password): use one `[[credentials]]` table per credential",
        ));
    }
    let username = c.username.as_deref().map(str::trim);
    let username_key = format!("{name}.username");
    if let Some((key, source)) = access {
        if username.is_some() {
            return Err(invalid(
                username_key,
                &origin,
                "an access token is sent as Bearer without a user name: remove `username`",
            ));
        }
        let token = read_secret(&key, &origin, source)?;
        return Ok(Credential::AccessToken { token });
    }
    let username = match username {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => {
            return Err(invalid(
                username_key,
                &origin,
                if api.is_some() {
                    "required with `api_token`: your Atlassian account e-mail"
                } else {
                    "required with `password`: your Bitbucket username"
                },
            ))
        }
    };
    if let Some((key, source)) = api {
        if !looks_like_email(&username) {
            return Err(invalid(
                username_key,
                &origin,
                format!("API tokens need your Atlassian account e-mail as username, not a Bitbucket username (got {username:?})"),
            ));
        }
        let token = read_secret(&key, &origin, source)?;
        return Ok(Credential::ApiToken {
            email: username,
            token,
        });
    }
    let Some((key, source)) = password else {
        // `kinds == 1` and neither access nor api is set, so password is.
        return Err(invalid(name, &origin, "no credential kind recognised"));
    };
    if username.contains('@') {
        return Err(invalid(
            username_key,
            &origin,
            format!("app passwords need your Bitbucket username, not an e-mail (got {username:?}); with an e-mail, use an API token (`api_token`)"),
        ));
    }
    let password = read_secret(&key, &origin, source)?;
    let credential = Credential::AppPassword { username, password };
    warnings.push(format!(
        "{name} ({}): {APP_PASSWORD_WARNING}",
        credential.label()
    ));
    Ok(credential)
}

/// One kind's secret in a `[[credentials]]` table: inline or `*_file`, at most one of
/// them. Returns the key that supplied it (for errors) and where to read it.
fn pick_secret(
    f: &LoadedFile,
    name: &str,
    inline: &Option<FileSecret>,
    path: &Option<PathBuf>,
    key: &str,
) -> Result<Option<(String, SecretSource)>, ConfigError> {
    match (inline, path) {
        (Some(_), Some(_)) => Err(invalid(
            name,
            &f.origin(),
            format!("set `{key}` or `{key}_file`, not both"),
        )),
        (Some(secret), None) => Ok(Some((
            format!("{name}.{key}"),
            SecretSource::Inline(secret.0.clone()),
        ))),
        (None, Some(path)) => Ok(Some((
            format!("{name}.{key}_file"),
            SecretSource::File(f.resolve(path)),
        ))),
        (None, None) => Ok(None),
    }
}

/// The single credential the `BITBUCKET_*` variables describe, if any.
fn env_credential(
    env: &Env<'_>,
    warnings: &mut Vec<String>,
) -> Result<Option<Credential>, ConfigError> {
    // For each kind: (inline variable, file variable) → the variable that supplied it and the source.
    let pick = |inline: &'static str,
                file: &'static str|
     -> Result<Option<(&'static str, SecretSource)>, ConfigError> {
        match (env.get(inline), env.get(file)) {
            (Some(_), Some(_)) => Err(invalid(
                inline,
                &Origin::Env(inline),
                format!("set {inline} or {file}, not both"),
            )),
            (Some(value), None) => Ok(Some((inline, SecretSource::Inline(Secret::new(value))))),
            (None, Some(path)) => Ok(Some((file, SecretSource::File(PathBuf::from(path))))),
            (None, None) => Ok(None),
        }
    };
    let access = pick("BITBUCKET_ACCESS_TOKEN", "BITBUCKET_ACCESS_TOKEN_FILE")?;
    let api = pick("BITBUCKET_API_TOKEN", "BITBUCKET_API_TOKEN_FILE")?;
    let password = pick("BITBUCKET_PASSWORD", "BITBUCKET_PASSWORD_FILE")?;
    let username = env.get("BITBUCKET_USERNAME");
    let username_origin = Origin::Env("BITBUCKET_USERNAME");

    let present: Vec<&'static str> = [&access, &api, &password]
        .iter()
        .filter_map(|k| k.as_ref().map(|(var, _)| *var))
        .collect();
    if present.len() > 1 {
        return Err(invalid(
            present[0],
            &Origin::Env(present[0]),
            format!(
                "the environment describes more than one credential ({}): set only one of BITBUCKET_ACCESS_TOKEN, BITBUCKET_API_TOKEN, BITBUCKET_PASSWORD",
                present.join(", ")
            ),
        ));
    }
    let secret =
        |var: &'static str, source: SecretSource| read_secret(var, &Origin::Env(var), source);
    if let Some((var, source)) = access {
        if username.is_some() {
            // Not an error: the variable may be set for other tools in the same shell.
            warnings.push(
                "BITBUCKET_USERNAME is ignored: an access token (BITBUCKET_ACCESS_TOKEN) is sent without a user name"
                    .to_string(),
            );
        }
        return Ok(Some(Credential::AccessToken {
            token: secret(var, source)?,
        }));
    }
    if let Some((var, source)) = api {
        let Some(email) = username else {
            return Err(invalid(
                "BITBUCKET_USERNAME",
                &username_origin,
                format!("required with {var}: your Atlassian account e-mail"),
            ));
        };
        if !looks_like_email(&email) {
            return Err(invalid(
                "BITBUCKET_USERNAME",
                &username_origin,
                format!("API tokens need your Atlassian account e-mail as username, not a Bitbucket username (got {email:?})"),
            ));
        }
        return Ok(Some(Credential::ApiToken {
            email,
            token: secret(var, source)?,
        }));
    }
    if let Some((var, source)) = password {
        let Some(username) = username else {
            return Err(invalid(
                "BITBUCKET_USERNAME",
                &username_origin,
                format!("required with {var}: your Bitbucket username"),
            ));
        };
        if username.contains('@') {
            return Err(invalid(
                "BITBUCKET_USERNAME",
                &username_origin,
                format!("app passwords need your Bitbucket username, not an e-mail (got {username:?}); with an e-mail, use BITBUCKET_API_TOKEN"),
            ));
        }
        let credential = Credential::AppPassword {
            username,
            password: secret(var, source)?,
        };
        warnings.push(format!(
            "BITBUCKET_PASSWORD ({}): {APP_PASSWORD_WARNING}",
            credential.label()
        ));
        return Ok(Some(credential));
    }
    if username.is_some() {
        // A user name alone is almost certainly a forgotten token; say so now rather
        // than fail later with "no credentials" or silently use the file's.
        return Err(invalid(
            "BITBUCKET_USERNAME",
            &username_origin,
            "is set, but neither BITBUCKET_API_TOKEN nor BITBUCKET_PASSWORD (or their _FILE forms) is",
        ));
    }
    Ok(None)
}
