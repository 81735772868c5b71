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
//! - **`shard` from Kubernetes**: when `BBCRAWL_SHARD` is unset, `BBCRAWL_SHARDS`
//!   (the number of shards) with `BBCRAWL_SHARD_INDEX` (a StatefulSet's pod index,
//!   through the downward API) or else `JOB_COMPLETION_INDEX` (an indexed Job) are
//!   the environment's value of `shard`; so a flag and `BBCRAWL_SHARD` beat them and
//!   they beat the file, as any environment value does. One of the pair without the
//!   other is an error (a pod that lost its index must not crawl every shard), except
//!   `JOB_COMPLETION_INDEX` alone, which Kubernetes sets in every indexed Job.
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
//!
//! Where each job lives:
//! - `mod.rs`         [`Config`], [`Overrides`] and [`Config::load`]: every key, once.
//! - `resolve.rs`     precedence (flag > environment > file > default) and where a value came from.
//! - `values.rs`      what each key accepts: workspaces, URLs, addresses, dates, integer ranges.
//! - `file.rs`        the config file: bounded read, TOML as written, redacted parse errors, permissions.
//! - `credentials.rs` [`Credential`] and [`Secret`], from `[[credentials]]` or `BITBUCKET_*`.
//! - `error.rs`       [`ConfigError`].

mod credentials;
mod error;
mod file;
mod resolve;
mod values;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use url::Url;

use crate::schedule::{SlugFilter, SlugGlobs};
use crate::shard::{Shard, ShardError};

pub use credentials::{Credential, CredentialKind, Secret};
pub use error::ConfigError;
pub use file::{read_small_file, FileReadError, MAX_FILE_BYTES};
pub use values::{parse_instant, parse_workspace};

use credentials::resolve_credentials;
use file::{in_file, read_file, FileConfig};
use resolve::{invalid, resolve, Env, Found, Origin, Refusal};
use values::{
    non_empty_path, parse_api_url, parse_globs, parse_listen, parse_since, parse_workspaces,
    split_list, toml_date_text, IntRange,
};

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

/// The range of every `*_seconds` key: at least a second, at most a year. Far larger
/// values are certainly typos, and keeping durations bounded means
/// `Instant + duration` can never overflow in the layers that sleep or time out.
const SECONDS: IntRange = IntRange {
    min: 1,
    max: 365 * 24 * 3600,
};

/// Above this many concurrent requests a single process only runs into the rate limit
/// faster; the bound catches a misplaced digit.
const MAX_IN_FLIGHT_LIMIT: i64 = 1024;

/// Retrying more often than this cannot help a transient error and burns the hourly budget.
const MAX_RETRIES_LIMIT: i64 = 100;

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
    /// Which repositories to crawl: the `include` and `exclude` globs on slugs,
    /// compiled (an invalid glob is a configuration error).
    pub slugs: SlugFilter,
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
    /// A pass does not start with less free disk than this on the store's
    /// filesystem (`min_free_disk_mb`; 0: no floor); `None`: automatic (see
    /// `store::disk`).
    pub min_free_disk: Option<u64>,
    /// The exporter toolkit's web configuration for the endpoint (TLS,
    /// basic auth, headers), when set (`web_config_file`).
    pub web_config_file: Option<PathBuf>,
    /// A non-loopback `listen` without a web config is allowed.
    pub insecure_listen: bool,
    /// `/api/v1/*` is served on the endpoint.
    pub api: bool,
    /// `/healthz` answers without basic auth.
    pub health_without_auth: bool,
    /// This instance crawls only the repositories of this shard (`shard`);
    /// `None`: every repository.
    pub shard: Option<Shard>,
    /// The webhook receiver's own listener (`hooks_listen`; section 13);
    /// `None`: no receiver.
    pub hooks_listen: Option<SocketAddr>,
    /// The file holding the webhooks' HMAC secret (`hooks_secret_file`):
    /// required with `hooks_listen`, written by `hooks install`.
    pub hooks_secret_file: Option<PathBuf>,
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
    /// `--web.config.file`.
    pub web_config_file: Option<PathBuf>,
    /// `--requests-per-hour`.
    pub requests_per_hour: Option<u32>,
    /// `--shard` (`I/N`).
    pub shard: Option<String>,
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
        let mut warnings = Vec::new();

        // Every key, in one place: its flag, variable and file key (`None` where SPEC
        // section 2 has none), its default and what it accepts. The order is the order
        // in which errors are reported.
        let workspaces = resolve(
            "workspaces",
            // Repeated and comma-separated flags make one list; none given means unset.
            Found::flag(
                "--workspace",
                (!overrides.workspaces.is_empty()).then(|| {
                    overrides
                        .workspaces
                        .iter()
                        .flat_map(|w| split_list(w))
                        .collect()
                }),
            ),
            env.list("BBCRAWL_WORKSPACES"),
            in_file(file, |v| v.workspaces.clone()),
            Vec::new(),
            parse_workspaces,
        )?;
        let api_url = resolve(
            "api_url",
            Found::flag("--api-url", overrides.api_url.clone()),
            env.found("BBCRAWL_API_URL"),
            in_file(file, |v| v.api_url.clone()),
            // The default is a valid constant; it goes through the same normalisation.
            parse_api_url(DEFAULT_API_URL)
                .map_err(|message| invalid("api_url", &Origin::Default, message))?,
            |raw| Ok(parse_api_url(&raw)?),
        )?;
        let store = resolve(
            "store",
            Found::flag("--store", overrides.store.clone()),
            env.found("BBCRAWL_STORE").map(|f| f.map(PathBuf::from)),
            file.and_then(|f| f.path(|v| v.store.as_ref())),
            PathBuf::from(DEFAULT_STORE),
            non_empty_path,
        )?;
        let include: SlugGlobs = resolve(
            "include",
            None,
            env.list("BBCRAWL_INCLUDE"),
            in_file(file, |v| v.include.clone()),
            SlugGlobs::default(),
            parse_globs,
        )?;
        let exclude: SlugGlobs = resolve(
            "exclude",
            None,
            env.list("BBCRAWL_EXCLUDE"),
            in_file(file, |v| v.exclude.clone()),
            SlugGlobs::default(),
            parse_globs,
        )?;
        let since = resolve(
            "since",
            None,
            env.found("BBCRAWL_SINCE"),
            in_file(file, |v| v.since.clone()).map(|f| f.and_then(toml_date_text)),
            None,
            |raw| Ok(Some(parse_since(&raw)?)),
        )?;

        let requests_per_hour = int_key(
            "requests_per_hour",
            IntRange {
                min: 1,
                max: i64::from(u32::MAX),
            },
            Found::flag(
                "--requests-per-hour",
                overrides.requests_per_hour.map(i64::from),
            ),
            env.found("BBCRAWL_REQUESTS_PER_HOUR"),
            in_file(file, |v| v.requests_per_hour),
            DEFAULT_REQUESTS_PER_HOUR,
        )?;
        let max_in_flight = int_key(
            "max_in_flight",
            IntRange {
                min: 1,
                max: MAX_IN_FLIGHT_LIMIT,
            },
            None,
            env.found("BBCRAWL_MAX_IN_FLIGHT"),
            in_file(file, |v| v.max_in_flight),
            DEFAULT_MAX_IN_FLIGHT,
        )?;
        let page_size = int_key(
            "page_size",
            IntRange { min: 10, max: 100 },
            None,
            None,
            in_file(file, |v| v.page_size),
            DEFAULT_PAGE_SIZE,
        )?;
        let max_retries = int_key(
            "max_retries",
            IntRange {
                min: 0,
                max: MAX_RETRIES_LIMIT,
            },
            None,
            None,
            in_file(file, |v| v.max_retries),
            DEFAULT_MAX_RETRIES,
        )?;
        let connect_timeout = Duration::from_secs(int_key(
            "connect_timeout_seconds",
            SECONDS,
            None,
            None,
            in_file(file, |v| v.connect_timeout_seconds),
            DEFAULT_CONNECT_TIMEOUT_SECONDS,
        )?);
        let request_timeout = Duration::from_secs(int_key(
            "request_timeout_seconds",
            SECONDS,
            None,
            None,
            in_file(file, |v| v.request_timeout_seconds),
            DEFAULT_REQUEST_TIMEOUT_SECONDS,
        )?);
        let interval = Duration::from_secs(int_key(
            "interval_seconds",
            SECONDS,
            None,
            env.found("BBCRAWL_INTERVAL_SECONDS"),
            in_file(file, |v| v.interval_seconds),
            DEFAULT_INTERVAL_SECONDS,
        )?);
        let audit_interval = Duration::from_secs(int_key(
            "audit_interval_seconds",
            SECONDS,
            None,
            env.found("BBCRAWL_AUDIT_INTERVAL_SECONDS"),
            in_file(file, |v| v.audit_interval_seconds),
            DEFAULT_AUDIT_INTERVAL_SECONDS,
        )?);
        let min_free_disk_mb = int_key(
            "min_free_disk_mb",
            IntRange {
                min: 0,
                max: 1 << 30,
            },
            None,
            env.found("BBCRAWL_MIN_FREE_DISK_MB"),
            in_file(file, |v| v.min_free_disk_mb),
            -1i64,
        )?;

        let listen = resolve(
            "listen",
            Found::flag("--listen", overrides.listen.clone()),
            env.found("BBCRAWL_LISTEN"),
            in_file(file, |v| v.listen.clone()),
            DEFAULT_LISTEN,
            |raw| Ok(parse_listen(&raw)?),
        )?;
        let web_config_file = resolve(
            "web_config_file",
            Found::flag("--web.config.file", overrides.web_config_file.clone()),
            env.found("BBCRAWL_WEB_CONFIG_FILE")
                .map(|f| f.map(PathBuf::from)),
            file.and_then(|f| f.path(|v| v.web_config_file.as_ref())),
            None,
            |p| non_empty_path(p).map(Some),
        )?;
        let flag_in_file = |key: &str, field: fn(&FileConfig) -> Option<bool>, default: bool| {
            resolve(key, None, None, in_file(file, field), default, Ok)
        };
        let insecure_listen = flag_in_file("insecure_listen", |v| v.insecure_listen, false)?;
        let api = flag_in_file("api", |v| v.api, true)?;
        let health_without_auth =
            flag_in_file("health_without_auth", |v| v.health_without_auth, false)?;
        if !listen.ip().is_loopback() && web_config_file.is_none() && insecure_listen {
            warnings.push(format!(
                "listen address {listen} is not loopback and there is no web_config_file (insecure_listen = true): metrics, health and the query API — every commit message and author e-mail — are reachable from the network without TLS or a password"
            ));
        }

        let parse_shard = |found: Found<String>| {
            found.and_then(|text| Shard::parse(&text).map_err(|e| Refusal::from(e.to_string())))
        };
        let shard = resolve(
            "shard",
            Found::flag("--shard", overrides.shard.clone()).map(parse_shard),
            env.found("BBCRAWL_SHARD")
                .map(parse_shard)
                .or_else(|| shard_from_kubernetes(&env)),
            in_file(file, |v| v.shard.clone()).map(parse_shard),
            None,
            |shard| Ok(Some(shard)),
        )?;

        let hooks_listen = resolve(
            "hooks_listen",
            None,
            env.found("BBCRAWL_HOOKS_LISTEN"),
            in_file(file, |v| v.hooks_listen.clone()),
            None,
            |raw| Ok(Some(parse_listen(&raw)?)),
        )?;
        let hooks_secret_file = resolve(
            "hooks_secret_file",
            None,
            env.found("BBCRAWL_HOOKS_SECRET_FILE")
                .map(|f| f.map(PathBuf::from)),
            file.and_then(|f| f.path(|v| v.hooks_secret_file.as_ref())),
            None,
            |p| non_empty_path(p).map(Some),
        )?;
        if let (Some(addr), None) = (hooks_listen, &hooks_secret_file) {
            return Err(ConfigError::Invalid {
                key: "hooks_listen".into(),
                origin: format!("{addr}, from the configuration"),
                message: "the webhook receiver needs `hooks_secret_file` (the HMAC secret Bitbucket signs deliveries with; `bbcrawl hooks install` writes it): an unsigned receiver would let anyone trigger crawls".into(),
            });
        }

        if let Some(addr) = hooks_listen.filter(|a| a.port() != 0 && *a == listen) {
            return Err(ConfigError::Invalid {
                key: "hooks_listen".into(),
                origin: "the configuration".into(),
                message: format!(
                    "{addr} is also `listen`: the webhook receiver needs its own address, so that only it can face the internet"
                ),
            });
        }

        let credentials = resolve_credentials(&env, file, &mut warnings)?;

        Ok(Config {
            workspaces,
            api_url,
            store,
            slugs: SlugFilter::new(include, exclude),
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
            min_free_disk: u64::try_from(min_free_disk_mb).ok().map(|mb| mb << 20),
            web_config_file,
            insecure_listen,
            api,
            health_without_auth,
            shard,
            hooks_listen,
            hooks_secret_file,
            credentials,
            warnings,
        })
    }
}

/// An integer key through [`resolve()`]: text from the environment becomes a number
/// first, then whichever source wins is range-checked and converted to the key's type.
fn int_key<T: TryFrom<i64>>(
    key: &str,
    range: IntRange,
    flag: Option<Found<i64>>,
    env: Option<Found<String>>,
    file: Option<Found<i64>>,
    default: T,
) -> Result<T, ConfigError> {
    let env = env.map(|f| f.and_then(|text| range.parse_text(&text)));
    resolve(key, flag, env, file, default, |n| range.check(n))
}

/// `shard` as Kubernetes gives it (see the module documentation):
/// `BBCRAWL_SHARDS` with `BBCRAWL_SHARD_INDEX`, else with `JOB_COMPLETION_INDEX`.
fn shard_from_kubernetes(env: &Env) -> Option<Found<Shard>> {
    const COUNT: &str = "BBCRAWL_SHARDS";
    let count = env.get(COUNT);
    let (index_var, index, origin) = match (env.get("BBCRAWL_SHARD_INDEX"), &count) {
        (Some(index), _) => (
            "BBCRAWL_SHARD_INDEX",
            index,
            "BBCRAWL_SHARD_INDEX and BBCRAWL_SHARDS",
        ),
        (None, Some(_)) => match env.get("JOB_COMPLETION_INDEX") {
            Some(index) => (
                "JOB_COMPLETION_INDEX",
                index,
                "JOB_COMPLETION_INDEX and BBCRAWL_SHARDS",
            ),
            None => {
                return Some(Found::refused(
                    Origin::Env(COUNT),
                    "BBCRAWL_SHARDS is set but no shard index is: set BBCRAWL_SHARD_INDEX (in a StatefulSet, from the pod-index label `apps.kubernetes.io/pod-index` through the downward API; Kubernetes 1.28 or later sets it), run as an indexed Job (JOB_COMPLETION_INDEX), or set BBCRAWL_SHARD=I/N",
                ))
            }
        },
        (None, None) => return None,
    };
    let Some(count) = count else {
        return Some(Found::refused(
            Origin::Env("BBCRAWL_SHARD_INDEX"),
            "BBCRAWL_SHARD_INDEX needs BBCRAWL_SHARDS, the number of shards (a StatefulSet's replicas)",
        ));
    };
    let number = |var: &str, text: &str| -> Result<u64, Refusal> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{var} must be a whole number (got {text:?})").into());
        }
        Ok(text.parse::<u64>().unwrap_or(u64::MAX))
    };
    let shard = number(index_var, &index).and_then(|i| {
        let n = number(COUNT, &count)?;
        Shard::new(i, n).map_err(|e| {
            let var = match e {
                ShardError::Count(_) => COUNT,
                _ => index_var,
            };
            Refusal::from(format!("{var}: {e}"))
        })
    });
    Some(match shard {
        Ok(shard) => Found::new(Origin::Env(origin), shard),
        Err(refusal) => Found::refused(Origin::Env(origin), refusal),
    })
}
