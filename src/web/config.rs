//! The web config file: the Prometheus exporter toolkit's format (its
//! `docs/web-configuration.md`), read by [`load`] into a checked [`WebConfig`].
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt            # relative to this file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients-ca.crt
//!   client_allowed_sans: [scraper.example.net]
//!   min_version: TLS12               # TLS12 (default) or TLS13
//!   max_version: TLS13
//!   cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
//!   curve_preferences: [X25519, CurveP256]
//! http_server_config:
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! basic_auth_users:
//!   prometheus: $2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG
//! ```
//!
//! What the toolkit does, this does: strict keys (an unknown key anywhere is an
//! error naming it), relative file paths resolved against the config file's
//! directory, an empty file meaning "no TLS, no auth", the same client auth types,
//! TLS version names, Go cipher suite and curve names, the same five settable
//! response headers (and the values allowed for two of them), and bcrypt hashes for
//! basic auth users. Where it differs, it refuses rather than guesses:
//!
//! - `TLS10`/`TLS11`, CBC and RSA key exchange cipher suites and `CurveP521`: rustls
//!   (with the ring provider) does not implement them, so naming one is an error.
//! - TLS 1.3 cipher suites are not configurable (as in Go): naming one in
//!   `cipher_suites` is accepted and has no effect; the list restricts TLS 1.2.
//! - `client_ca_file` is required by the verifying client auth types (Go would fall
//!   back to the system roots); `client_allowed_sans` needs a verifying type (checking
//!   the names of an unverified certificate proves nothing), and with
//!   `VerifyClientCertIfGiven` it makes a certificate mandatory, as the toolkit's SAN
//!   check in effect does.
//! - Both `cert` and `cert_file` (or `key`/`key_file`, `client_ca`/`client_ca_file`)
//!   is an error (the toolkit silently prefers the file).
//! - TLS settings without any certificate, key, CA or client auth type are an error
//!   (the toolkit would serve plain HTTP and ignore them).
//! - `prefer_server_cipher_suites` is accepted and has no effect (Go ignores it
//!   too since 1.18; rustls follows the client's order among the allowed suites).
//! - `http2` is accepted and recorded: the daemon serves HTTP/1.1 only.
//! - `rate_limit` (the toolkit's request rate limiter) is not supported: an error.
//! - An inline `key` in a file that group or others may read is refused, as
//!   bbcrawl's own config file refuses inline secrets.
//!
//! The YAML reader is `serde-saphyr`: pure, `#![forbid(unsafe_code)]` Rust, maintained,
//! panic-free on hostile input and bounded in alias expansion, with line and column
//! on every error and source snippets that can be turned off. The alternatives are
//! archived (`serde_yaml`), deprecated (`serde_yml`), or a C library translated to
//! unsafe Rust (`yaml_serde`, the YAML organisation's fork of `serde_yaml`).
//!
//! No error message holds a password hash or key material: the YAML reader's
//! snippets are off, and values are named by their key, never quoted (except names
//! that are not secrets, such as a cipher suite or a header value).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use rustls::{CipherSuite, NamedGroup};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::config::{read_small_file, FileReadError, MAX_FILE_BYTES};
use crate::human::{printable, truncate};

/// The web config file, checked. [`WebConfig::default`] is the empty file: no TLS,
/// no basic auth, no extra headers.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WebConfig {
    /// TLS, when the file configures it (`tls_server_config` with a certificate).
    pub tls: Option<TlsSettings>,
    /// User name → bcrypt hash (`$2a$`, `$2b$` or `$2y$`, checked in form only:
    /// no password is verified here). Empty: no basic auth.
    pub basic_auth_users: BTreeMap<String, String>,
    /// Extra response headers (`http_server_config.headers`), sorted by name,
    /// blank values left out (the toolkit: "unset if blank").
    pub headers: Vec<(String, String)>,
    /// `http_server_config.http2` as written (the toolkit's default is `true`).
    /// bbcrawl serves HTTP/1.1 only, whatever it says.
    pub http2: Option<bool>,
}

impl fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls)
            .field(
                "basic_auth_users",
                &self.basic_auth_users.keys().collect::<Vec<_>>(),
            )
            .field("headers", &self.headers)
            .field("http2", &self.http2)
            .finish()
    }
}

/// Where a certificate, key or CA bundle comes from: a file (re-read when it
/// changes) or PEM text written in the web config itself (`cert`, `key`, `client_ca`).
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file, absolute or resolved against the web config's directory.
    File(PathBuf),
    /// PEM text from the web config.
    Inline(String),
}

impl PemSource {
    /// The file, when it is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            PemSource::File(path) => Some(path),
            PemSource::Inline(_) => None,
        }
    }
}

/// Never shows inline PEM (it may be a private key).
impl fmt::Debug for PemSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemSource::File(path) => f.debug_tuple("File").field(path).finish(),
            PemSource::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

/// `tls_server_config`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The web config file these came from (named in error messages).
    pub config_file: PathBuf,
    /// The certificate chain, end-entity first (`cert_file` or `cert`).
    pub cert: PemSource,
    /// Its private key (`key_file` or `key`).
    pub key: PemSource,
    /// `client_auth_type`.
    pub client_auth: ClientAuth,
    /// The CAs for client certificates (`client_ca_file` or `client_ca`). Always
    /// present for the verifying types, never for [`ClientAuth::NoClientCert`].
    pub client_ca: Option<PemSource>,
    /// A verified client certificate must carry one of these subject alternative
    /// names (DNS name, e-mail address, IP address or URI, compared as text).
    /// Non-empty only with a verifying [`ClientAuth`].
    pub client_allowed_sans: Vec<String>,
    /// `min_version` (default TLS 1.2, as the toolkit's).
    pub min_version: TlsVersion,
    /// `max_version`; `None` is the highest rustls speaks (TLS 1.3).
    pub max_version: Option<TlsVersion>,
    /// `cipher_suites` in the order written, each implemented by rustls; empty is
    /// rustls' defaults. TLS 1.3 suites may appear and have no effect (as in Go).
    pub cipher_suites: Vec<CipherSuite>,
    /// `curve_preferences` (key exchange groups) in the order written; empty is
    /// rustls' defaults.
    pub curves: Vec<NamedGroup>,
}

impl TlsSettings {
    /// `cert_file`, when the certificate is a file.
    pub fn cert_file(&self) -> Option<&Path> {
        self.cert.file()
    }

    /// `key_file`, when the key is a file.
    pub fn key_file(&self) -> Option<&Path> {
        self.key.file()
    }

    /// `client_ca_file`, when the client CAs are a file.
    pub fn client_ca_file(&self) -> Option<&Path> {
        self.client_ca.as_ref().and_then(PemSource::file)
    }

    /// Whether the TLS version range includes `version`.
    pub fn allows(&self, version: TlsVersion) -> bool {
        self.min_version <= version && self.max_version.is_none_or(|max| version <= max)
    }
}

/// `client_auth_type`: Go's `tls.ClientAuthType` names, with the same meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    NoClientCert,
    /// A certificate is asked for, optional, not verified.
    RequestClientCert,
    /// A certificate is required, not verified (`RequireClientCert` is an old name).
    RequireAnyClientCert,
    /// A certificate is optional; one that is given must chain to `client_ca_file`.
    VerifyClientCertIfGiven,
    /// A certificate chaining to `client_ca_file` is required.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    /// The toolkit's name.
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::NoClientCert => "NoClientCert",
            ClientAuth::RequestClientCert => "RequestClientCert",
            ClientAuth::RequireAnyClientCert => "RequireAnyClientCert",
            ClientAuth::VerifyClientCertIfGiven => "VerifyClientCertIfGiven",
            ClientAuth::RequireAndVerifyClientCert => "RequireAndVerifyClientCert",
        }
    }

    /// Whether a given certificate is checked against `client_ca_file`.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }

    fn parse(name: &str) -> Option<ClientAuth> {
        Some(match name {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            // The toolkit keeps `RequireClientCert` for backwards compatibility.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return None,
        })
    }
}

/// A TLS version rustls speaks (`TLS10` and `TLS11` are refused at load).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 (`TLS12`).
    Tls12,
    /// TLS 1.3 (`TLS13`).
    Tls13,
}

impl TlsVersion {
    /// The toolkit's name.
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "TLS12",
            TlsVersion::Tls13 => "TLS13",
        }
    }
}

/// Why the web config (or a certificate, key or CA it names) cannot be used. Every
/// variant is a configuration error ([`WebConfigError::exit_code`] is 2), and no
/// message holds a password hash or key material.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The web config file could not be read.
    #[error("web config {}: cannot read it: {source}", path.display())]
    Read {
        /// The web config file.
        path: PathBuf,
        /// Why.
        source: FileReadError,
    },
    /// Not YAML of the expected shape: a syntax error, a value of the wrong type,
    /// an unknown or repeated key. The message has the line and column.
    #[error("web config {}: {message}", path.display())]
    Syntax {
        /// The web config file.
        path: PathBuf,
        /// What is wrong, where.
        message: String,
    },
    /// A setting is not accepted, or settings contradict each other.
    #[error("web config {}: {message}", path.display())]
    Invalid {
        /// The web config file.
        path: PathBuf,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A certificate, key or CA bundle cannot be read or used.
    #[error("web config {}: {what}{}: {message}", path.display(), pem_origin(file.as_deref()))]
    Pem {
        /// The web config file.
        path: PathBuf,
        /// The setting: `cert_file`, `key`, `client_ca_file`, ….
        what: &'static str,
        /// The file, or `None` for PEM written in the web config.
        file: Option<PathBuf>,
        /// What is wrong with it.
        message: String,
    },
}

impl WebConfigError {
    /// Every web config error is a usage error (exit 2).
    pub fn exit_code(&self) -> u8 {
        crate::exit::USAGE
    }
}

/// ` /path` for a file, ` (written in the web config)` for inline PEM.
fn pem_origin(file: Option<&Path>) -> String {
    match file {
        Some(file) => format!(" {}", file.display()),
        None => " (written in the web config)".to_owned(),
    }
}

/// Reads and checks the web config file at `path`.
pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
    let text = read_small_file(path, MAX_FILE_BYTES).map_err(|source| WebConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let config = parse(&text, path)?;
    if let Some(tls) = &config.tls {
        if matches!(tls.key, PemSource::Inline(_)) {
            refuse_readable_by_others(path)?;
        }
    }
    Ok(config)
}

/// An inline private key in a file that group or others may read is refused, as
/// bbcrawl's own config file refuses inline secrets.
fn refuse_readable_by_others(path: &Path) -> Result<(), WebConfigError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| WebConfigError::Read {
                path: path.to_owned(),
                source: FileReadError::Io(e),
            })?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(WebConfigError::Invalid {
                path: path.to_owned(),
                message: format!(
                    "it holds a private key inline (`tls_server_config.key`) and is readable by group or others (mode {:03o}); run `chmod 600 {}` or put the key in its own file and use `key_file`",
                    mode & 0o777,
                    path.display()
                ),
            });
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Parses and checks web config `text`; `path` is the file it came from (named in
/// errors; relative file names are resolved against its directory).
pub fn parse(text: &str, path: &Path) -> Result<WebConfig, WebConfigError> {
    let raw = read_yaml(text, path)?;
    let Some(raw) = raw else {
        return Ok(WebConfig::default());
    };
    let invalid = |message: String| WebConfigError::Invalid {
        path: path.to_owned(),
        message,
    };
    let http = raw.http_server_config.unwrap_or_default();
    let headers = check_headers(http.headers.unwrap_or_default().0).map_err(invalid)?;
    let basic_auth_users =
        check_users(raw.basic_auth_users.unwrap_or_default().0).map_err(invalid)?;
    let tls = match raw.tls_server_config {
        Some(tls) => check_tls(tls, path).map_err(invalid)?,
        None => None,
    };
    Ok(WebConfig {
        tls,
        basic_auth_users,
        headers,
        http2: http.http2,
    })
}

// ---------------------------------------------------------------------------------
// YAML → raw sections, strictly.

thread_local! {
    /// While the YAML is read: the keys leading to the value being read, and the
    /// message of an error raised here (not by the YAML reader).
    static READING: RefCell<Reading> = RefCell::new(Reading::default());
}

#[derive(Default)]
struct Reading {
    path: Vec<String>,
    own_error: Option<String>,
}

/// Reads the YAML into the raw sections; `None` for an empty document.
fn read_yaml(text: &str, path: &Path) -> Result<Option<RawTop>, WebConfigError> {
    READING.with(|r| *r.borrow_mut() = Reading::default());
    let options = serde_saphyr::options! {
        with_snippet: false,
    };
    let result = serde_saphyr::from_str_with_options::<Option<RawTop>>(text, options);
    let reading = READING.with(|r| std::mem::take(&mut *r.borrow_mut()));
    result.map_err(|e| {
        let at = e
            .location()
            .filter(|l| l.line() > 0)
            .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
            .unwrap_or_default();
        let message = match reading.own_error {
            Some(own) => format!("{own}{at}"),
            None => {
                let plain = e.render_with_options(serde_saphyr::render_options! {
                    formatter: &serde_saphyr::UserMessageFormatter,
                    snippets: serde_saphyr::SnippetMode::Off,
                });
                if reading.path.is_empty() {
                    plain
                } else {
                    format!("`{}`: {plain}", reading.path.join("."))
                }
            }
        };
        WebConfigError::Syntax {
            path: path.to_owned(),
            message,
        }
    })
}

/// An error about `key` raised while reading (an unknown key): its message is kept
/// as written. (Made as serde's "unknown field" so that the YAML reader adds where.)
fn own_error<E: serde::de::Error>(key: &str, message: String) -> E {
    READING.with(|r| r.borrow_mut().own_error = Some(message));
    E::unknown_field(key, &[])
}

/// The next value of `map`, with `key` on the path while it is read.
fn next_value<'de, A, T>(map: &mut A, key: &str) -> Result<T, A::Error>
where
    A: MapAccess<'de>,
    T: Deserialize<'de>,
{
    READING.with(|r| r.borrow_mut().path.push(key.to_owned()));
    let value = map.next_value()?;
    READING.with(|r| r.borrow_mut().path.pop());
    Ok(value)
}

/// A key as shown in an error: one line, at most 64 columns.
fn shown(key: &str) -> String {
    truncate(&printable(key), 64)
}

/// A section: a struct of optional fields read from a YAML mapping, every other key
/// an error naming it (and the section).
macro_rules! section {
    (
        $raw:ident, $label:literal,
        { $($field:ident : $ty:ty),* $(,)? }
        $(, unsupported { $($ukey:literal => $why:literal),* $(,)? })?
    ) => {
        #[derive(Default)]
        struct $raw {
            $($field: Option<$ty>,)*
        }

        impl<'de> Deserialize<'de> for $raw {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct SectionVisitor;
                impl<'de> Visitor<'de> for SectionVisitor {
                    type Value = $raw;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a mapping ({})", $label)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<$raw, A::Error> {
                        let mut raw = $raw::default();
                        while let Some(key) = map.next_key::<String>()? {
                            match key.as_str() {
                                $(stringify!($field) => raw.$field = next_value(&mut map, &key)?,)*
                                $($($ukey => return Err(own_error(&key, format!(
                                    "`{}` in {} is not supported by bbcrawl: {}", $ukey, $label, $why
                                ))),)*)?
                                _ => return Err(own_error(&key, format!(
                                    "unknown key `{}` in {}", shown(&key), $label
                                ))),
                            }
                        }
                        Ok(raw)
                    }
                }
                deserializer.deserialize_map(SectionVisitor)
            }
        }
    };
}

section!(RawTop, "the top level", {
    tls_server_config: RawTls,
    http_server_config: RawHttp,
    basic_auth_users: Entries,
}, unsupported {
    "rate_limit" => "it has no request rate limiter; remove the section",
});

section!(RawTls, "tls_server_config", {
    cert: String,
    key: String,
    client_ca: String,
    cert_file: String,
    key_file: String,
    client_auth_type: String,
    client_ca_file: String,
    cipher_suites: Vec<String>,
    curve_preferences: Vec<String>,
    min_version: String,
    max_version: String,
    prefer_server_cipher_suites: bool,
    client_allowed_sans: Vec<String>,
});

section!(RawHttp, "http_server_config", {
    http2: bool,
    headers: Entries,
});

/// A mapping of names to (optional) strings: `basic_auth_users`, `headers`.
#[derive(Default)]
struct Entries(BTreeMap<String, Option<String>>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value = next_value(&mut map, &key)?;
                    entries.insert(key, value);
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

// ---------------------------------------------------------------------------------
// Checks.

/// The response headers the toolkit lets a web config set, with the values it
/// accepts (`None`: any).
const HEADERS: &[(&str, Option<&[&str]>)] = &[
    ("Strict-Transport-Security", None),
    ("X-Content-Type-Options", Some(&["nosniff"])),
    ("X-Frame-Options", Some(&["deny", "sameorigin"])),
    ("X-XSS-Protection", None),
    ("Content-Security-Policy", None),
];

fn check_headers(
    headers: BTreeMap<String, Option<String>>,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let Some((_, allowed)) = HEADERS.iter().find(|(known, _)| *known == name) else {
            return Err(format!(
                "HTTP header `{}` can not be configured: http_server_config.headers takes {}",
                shown(&name),
                HEADERS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        let value = value.unwrap_or_default();
        if let Some(allowed) = allowed {
            if !allowed.contains(&value.as_str()) {
                return Err(format!(
                    "invalid value for {name}: expected one of {}, got `{}`",
                    allowed.join(", "),
                    shown(&value)
                ));
            }
        }
        if value.trim().is_empty() {
            continue;
        }
        if value.chars().any(|c| c != '\t' && c.is_control()) {
            return Err(format!(
                "the value of {name} has a control character (a line break?): not a valid HTTP header value"
            ));
        }
        out.push((name, value));
    }
    Ok(out)
}

fn check_users(
    users: BTreeMap<String, Option<String>>,
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (user, hash) in users {
        if user.contains(':') {
            return Err(format!(
                "basic_auth_users: user name `{}` has a `:`, which basic auth cannot carry",
                shown(&user)
            ));
        }
        let hash = hash.unwrap_or_default();
        if hash.is_empty() {
            return Err(format!(
                "basic_auth_users: user `{}` has no password hash",
                shown(&user)
            ));
        }
        if !looks_like_bcrypt(&hash) {
            return Err(format!(
                "basic_auth_users: the password of user `{}` is not a bcrypt hash (`$2y$`, `$2b$` or `$2a$`, a two-digit cost from 04 to 31, `$` and 53 characters; `htpasswd -nBC 10 \"\" | tr -d ':\\n'` makes one)",
                shown(&user)
            ));
        }
        out.insert(user, hash);
    }
    Ok(out)
}

/// `$2y$10$` + 53 characters of bcrypt's base64 (22 of salt, 31 of hash).
pub(crate) fn looks_like_bcrypt(hash: &str) -> bool {
    let bytes = hash.as_bytes();
    if bytes.len() != 60 {
        return false;
    }
    let version_ok = matches!(&bytes[..4], b"$2a$" | b"$2b$" | b"$2y$");
    let cost_ok = bytes[4].is_ascii_digit()
        && bytes[5].is_ascii_digit()
        && (4..=31).contains(&((bytes[4] - b'0') * 10 + (bytes[5] - b'0')))
        && bytes[6] == b'$';
    let body_ok = bytes[7..]
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/'));
    version_ok && cost_ok && body_ok
}

/// A raw string setting, `None` when absent or empty (as the toolkit reads them).
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// `inline` or `file` (resolved against `dir`), not both.
fn pem_source(
    inline: Option<String>,
    file: Option<String>,
    names: (&str, &str),
    dir: &Path,
) -> Result<Option<PemSource>, String> {
    match (given(inline), given(file)) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config has both `{}` and `{}`: use one",
            names.0, names.1
        )),
        (Some(pem), None) => Ok(Some(PemSource::Inline(pem))),
        (None, Some(file)) => Ok(Some(PemSource::File(dir.join(file)))),
        (None, None) => Ok(None),
    }
}

fn check_tls(raw: RawTls, config_file: &Path) -> Result<Option<TlsSettings>, String> {
    let enabled = [
        &raw.cert,
        &raw.cert_file,
        &raw.key,
        &raw.key_file,
        &raw.client_ca,
        &raw.client_ca_file,
        &raw.client_auth_type,
    ]
    .iter()
    .any(|v| v.as_deref().is_some_and(|v| !v.is_empty()));
    if !enabled {
        let stray: Vec<&str> = [
            ("min_version", raw.min_version.is_some()),
            ("max_version", raw.max_version.is_some()),
            ("cipher_suites", raw.cipher_suites.is_some()),
            ("curve_preferences", raw.curve_preferences.is_some()),
            ("client_allowed_sans", raw.client_allowed_sans.is_some()),
            (
                "prefer_server_cipher_suites",
                raw.prefer_server_cipher_suites.is_some(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if stray.is_empty() {
            return Ok(None);
        }
        return Err(format!(
            "tls_server_config sets {} but no certificate: TLS needs cert_file and key_file (or remove the section to serve plain HTTP)",
            stray.join(", ")
        ));
    }

    // Go's filepath.Dir: "." for a bare file name.
    let dir = match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let cert = pem_source(raw.cert, raw.cert_file, ("cert", "cert_file"), dir)?;
    let key = pem_source(raw.key, raw.key_file, ("key", "key_file"), dir)?;
    let client_ca = pem_source(
        raw.client_ca,
        raw.client_ca_file,
        ("client_ca", "client_ca_file"),
        dir,
    )?;
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, _) => {
            return Err(
                "tls_server_config has no certificate: set cert_file (with key_file)".to_owned(),
            )
        }
        (Some(_), None) => {
            return Err("tls_server_config has a certificate but no key: set key_file".to_owned())
        }
    };

    let auth_name = raw.client_auth_type.unwrap_or_default();
    let client_auth = ClientAuth::parse(&auth_name).ok_or_else(|| {
        format!(
            "unknown client_auth_type `{}`: use NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert",
            shown(&auth_name)
        )
    })?;
    if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err(
            "client_ca_file is set but client_auth_type is NoClientCert (the toolkit: client CA's have been configured without a Client Auth Policy); set client_auth_type: RequireAndVerifyClientCert to check client certificates, or remove client_ca_file".to_owned(),
        );
    }
    if client_auth.verifies() && client_ca.is_none() {
        return Err(format!(
            "client_auth_type {} checks client certificates and needs client_ca_file: the CA certificates that sign them",
            client_auth.name()
        ));
    }
    if raw.client_allowed_sans.as_ref().is_some_and(Vec::is_empty) {
        return Err(
            "client_allowed_sans is an empty list: it would refuse every client certificate (as the toolkit's check does); list the allowed names or remove the key".to_owned(),
        );
    }
    let client_allowed_sans = raw.client_allowed_sans.unwrap_or_default();
    if !client_allowed_sans.is_empty() && !client_auth.verifies() {
        return Err(format!(
            "client_allowed_sans needs client_auth_type RequireAndVerifyClientCert (or VerifyClientCertIfGiven), not {}: the names of an unverified certificate prove nothing",
            client_auth.name()
        ));
    }

    let min_version = match raw.min_version {
        Some(name) => tls_version(&name, "min_version")?,
        None => TlsVersion::Tls12,
    };
    let max_version = raw
        .max_version
        .map(|name| tls_version(&name, "max_version"))
        .transpose()?;
    if let Some(max) = max_version {
        if max < min_version {
            return Err(format!(
                "min_version {} is above max_version {}: no TLS version is left",
                min_version.name(),
                max.name()
            ));
        }
    }

    let mut cipher_suites = Vec::new();
    for name in raw.cipher_suites.unwrap_or_default() {
        let suite = cipher_suite(&name)?;
        if !cipher_suites.contains(&suite) {
            cipher_suites.push(suite);
        }
    }
    let settings = TlsSettings {
        config_file: config_file.to_owned(),
        cert,
        key,
        client_auth,
        client_ca,
        client_allowed_sans,
        min_version,
        max_version,
        cipher_suites,
        curves: Vec::new(),
    };
    if !settings.cipher_suites.is_empty()
        && !settings.allows(TlsVersion::Tls13)
        && !settings.cipher_suites.iter().any(|s| is_tls12_suite(*s))
    {
        return Err(
            "cipher_suites names no TLS 1.2 cipher suite and max_version is TLS12: no cipher suite is left (TLS 1.3 suites only apply to TLS 1.3)".to_owned(),
        );
    }
    let mut curves = Vec::new();
    for name in raw.curve_preferences.unwrap_or_default() {
        let group = curve(&name)?;
        if !curves.contains(&group) {
            curves.push(group);
        }
    }
    Ok(Some(TlsSettings { curves, ..settings }))
}

fn tls_version(name: &str, key: &str) -> Result<TlsVersion, String> {
    match name {
        "TLS12" => Ok(TlsVersion::Tls12),
        "TLS13" => Ok(TlsVersion::Tls13),
        "TLS10" | "TLS11" => Err(format!(
            "{key} {name}: rustls supports TLS 1.2 and 1.3 only; use TLS12 or TLS13"
        )),
        _ => Err(format!(
            "unknown TLS version `{}` in {key}: use TLS12 or TLS13",
            shown(name)
        )),
    }
}

/// Go's cipher suite names that rustls (ring) implements.
const CIPHER_SUITES: &[(&str, CipherSuite)] = &[
    (
        "TLS_AES_128_GCM_SHA256",
        CipherSuite::TLS13_AES_128_GCM_SHA256,
    ),
    (
        "TLS_AES_256_GCM_SHA384",
        CipherSuite::TLS13_AES_256_GCM_SHA384,
    ),
    (
        "TLS_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Go's other cipher suite names (`tls.CipherSuites()` and
/// `tls.InsecureCipherSuites()`), which rustls does not implement, with why.
const UNIMPLEMENTED_SUITES: &[(&str, &str)] = &[
    ("TLS_RSA_WITH_RC4_128_SHA", "RSA key exchange, RC4"),
    ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", "RSA key exchange, CBC"),
    ("TLS_RSA_WITH_AES_128_CBC_SHA", "RSA key exchange, CBC"),
    ("TLS_RSA_WITH_AES_256_CBC_SHA", "RSA key exchange, CBC"),
    ("TLS_RSA_WITH_AES_128_CBC_SHA256", "RSA key exchange, CBC"),
    ("TLS_RSA_WITH_AES_128_GCM_SHA256", "RSA key exchange"),
    ("TLS_RSA_WITH_AES_256_GCM_SHA384", "RSA key exchange"),
    ("TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", "RC4"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", "CBC"),
    ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", "CBC"),
    ("TLS_ECDHE_RSA_WITH_RC4_128_SHA", "RC4"),
    ("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", "CBC"),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", "CBC"),
    ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", "CBC"),
    ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", "CBC"),
    ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", "CBC"),
];

fn cipher_suite(name: &str) -> Result<CipherSuite, String> {
    if let Some((_, suite)) = CIPHER_SUITES.iter().find(|(n, _)| *n == name) {
        return Ok(*suite);
    }
    let supported = CIPHER_SUITES
        .iter()
        .filter(|(_, s)| is_tls12_suite(*s))
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ");
    match UNIMPLEMENTED_SUITES.iter().find(|(n, _)| *n == name) {
        Some((_, why)) => Err(format!(
            "cipher suite {name} is not implemented by rustls ({why}); the TLS 1.2 suites it has are {supported}"
        )),
        None => Err(format!(
            "unknown cipher suite `{}` in cipher_suites (Go's names); the TLS 1.2 suites rustls has are {supported}",
            shown(name)
        )),
    }
}

/// Whether `suite` is a TLS 1.2 suite (the ones `cipher_suites` restricts).
pub(crate) fn is_tls12_suite(suite: CipherSuite) -> bool {
    !matches!(
        suite,
        CipherSuite::TLS13_AES_128_GCM_SHA256
            | CipherSuite::TLS13_AES_256_GCM_SHA384
            | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    )
}

fn curve(name: &str) -> Result<NamedGroup, String> {
    match name {
        "X25519" => Ok(NamedGroup::X25519),
        "CurveP256" => Ok(NamedGroup::secp256r1),
        "CurveP384" => Ok(NamedGroup::secp384r1),
        "CurveP521" => Err(
            "curve CurveP521 is not implemented by rustls (ring provider): use X25519, CurveP256 or CurveP384".to_owned(),
        ),
        _ => Err(format!(
            "unknown curve `{}` in curve_preferences: use X25519, CurveP256 or CurveP384",
            shown(name)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG";

    fn cfg(text: &str) -> Result<WebConfig, WebConfigError> {
        parse(text, Path::new("/etc/bbcrawl/web.yml"))
    }

    fn err(text: &str) -> String {
        cfg(text)
            .expect_err("the config should be refused")
            .to_string()
    }

    fn tls(extra: &str) -> String {
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}")
    }

    /// `config/web-config.example.yml` is a valid web config, and its
    /// example hash is of the password it names.
    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/web-config.example.yml");
        let web = load(&path).unwrap();
        let tls = web.tls.expect("the example has TLS");
        assert_eq!(
            tls.cert_file(),
            Some(path.with_file_name("bbcrawl.crt").as_path())
        );
        let hash = &web.basic_auth_users["prometheus"];
        assert!(bcrypt::verify("change-me", hash).unwrap());
        assert_eq!(
            web.headers,
            [(
                "Strict-Transport-Security".to_owned(),
                "max-age=31536000".to_owned()
            )]
        );
    }

    #[test]
    fn every_key_is_read() {
        let text = format!(
            "tls_server_config:
  cert_file: tls/server.crt
  key_file: /abs/server.key
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.crt
  client_allowed_sans: [scraper.example.net, 10.0.0.1]
  min_version: TLS12
  max_version: TLS13
  cipher_suites:
    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
    - TLS_AES_128_GCM_SHA256
    - TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
  curve_preferences: [X25519, CurveP256, CurveP384]
  prefer_server_cipher_suites: false
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Strict-Transport-Security: max-age=31536000; includeSubDomains
    X-Content-Type-Options: nosniff
    X-XSS-Protection: 1
    Content-Security-Policy: \"default-src 'self'\"
basic_auth_users:
  alice: {HASH}
  bob: '$2a$04$abcdefghijklmnopqrstuv0123456789ABCDEFGHIJKLMNOPQRSTU'
"
        );
        let config = cfg(&text).unwrap();
        let tls = config.tls.expect("TLS is configured");
        assert_eq!(
            tls.cert,
            PemSource::File(PathBuf::from("/etc/bbcrawl/tls/server.crt"))
        );
        assert_eq!(tls.key_file(), Some(Path::new("/abs/server.key")));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(tls.client_ca_file(), Some(Path::new("/etc/bbcrawl/ca.crt")));
        assert_eq!(tls.client_allowed_sans, ["scraper.example.net", "10.0.0.1"]);
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert_eq!(tls.max_version, Some(TlsVersion::Tls13));
        assert_eq!(
            tls.cipher_suites,
            [
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
        );
        assert_eq!(
            tls.curves,
            [
                NamedGroup::X25519,
                NamedGroup::secp256r1,
                NamedGroup::secp384r1
            ]
        );
        assert_eq!(tls.config_file, Path::new("/etc/bbcrawl/web.yml"));
        assert_eq!(config.http2, Some(false));
        assert_eq!(
            config.headers,
            [
                (
                    "Content-Security-Policy".into(),
                    "default-src 'self'".into()
                ),
                (
                    "Strict-Transport-Security".into(),
                    "max-age=31536000; includeSubDomains".into()
                ),
                ("X-Content-Type-Options".into(), "nosniff".into()),
                ("X-Frame-Options".into(), "deny".into()),
                ("X-XSS-Protection".into(), "1".into()),
            ]
        );
        assert_eq!(config.basic_auth_users.len(), 2);
        assert_eq!(config.basic_auth_users["alice"], HASH);
        // Debug shows user names, never hashes.
        let debug = format!(
            "{:?}",
            WebConfig {
                basic_auth_users: config.basic_auth_users.clone(),
                ..WebConfig::default()
            }
        );
        assert!(
            debug.contains("alice") && !debug.contains("$2y$"),
            "{debug}"
        );
    }

    #[test]
    fn defaults_and_inline_pem() {
        let config = cfg(&tls("")).unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.client_auth, ClientAuth::NoClientCert);
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert_eq!(tls.max_version, None);
        assert!(tls.cipher_suites.is_empty() && tls.curves.is_empty());
        assert!(tls.allows(TlsVersion::Tls12) && tls.allows(TlsVersion::Tls13));
        assert_eq!(config.http2, None);

        let inline = cfg("tls_server_config:
  cert: |
    -----BEGIN CERTIFICATE-----
    AAAA
    -----END CERTIFICATE-----
  key: |
    -----BEGIN PRIVATE KEY-----
    SECRETKEYMATERIAL
    -----END PRIVATE KEY-----
  client_auth_type: RequireClientCert
")
        .unwrap()
        .tls
        .unwrap();
        assert!(
            matches!(&inline.cert, PemSource::Inline(pem) if pem.starts_with("-----BEGIN CERTIFICATE-----\nAAAA\n"))
        );
        assert_eq!(inline.cert_file(), None);
        assert_eq!(inline.client_auth, ClientAuth::RequireAnyClientCert);
        let debug = format!("{inline:?}");
        assert!(!debug.contains("SECRETKEYMATERIAL"), "{debug}");
    }

    #[test]
    fn an_empty_file_is_no_tls_and_no_auth() {
        for text in [
            "",
            "\n",
            "# nothing yet\n",
            "---\n",
            "basic_auth_users:\n",
            "tls_server_config:\n",
            "tls_server_config: {}\nhttp_server_config:\n  headers:\n",
        ] {
            let config = cfg(text).unwrap();
            assert_eq!(config, WebConfig::default(), "{text:?}");
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let text = "tls_server_config:
  cert_file: server.crt
  key_file: ../keys/server.key
  client_auth_type: VerifyClientCertIfGiven
  client_ca_file: /etc/ssl/ca.pem
";
        let tls = parse(text, Path::new("conf/web.yml")).unwrap().tls.unwrap();
        assert_eq!(tls.cert_file(), Some(Path::new("conf/server.crt")));
        assert_eq!(tls.key_file(), Some(Path::new("conf/../keys/server.key")));
        assert_eq!(tls.client_ca_file(), Some(Path::new("/etc/ssl/ca.pem")));
        let bare = parse(text, Path::new("web.yml")).unwrap().tls.unwrap();
        assert_eq!(bare.cert_file(), Some(Path::new("./server.crt")));
    }

    #[test]
    fn unknown_keys_are_named_with_their_section() {
        assert_eq!(
            err("tls_server_confg:\n  cert_file: a\n"),
            "web config /etc/bbcrawl/web.yml: unknown key `tls_server_confg` in the top level (line 1, column 1)"
        );
        assert_eq!(
            err("tls_server_config:\n  cert_filse: server.crt\n"),
            "web config /etc/bbcrawl/web.yml: unknown key `cert_filse` in tls_server_config (line 2, column 3)"
        );
        let e = err("http_server_config:\n  http3: true\n");
        assert!(
            e.contains("unknown key `http3` in http_server_config"),
            "{e}"
        );
        let e = err("rate_limit:\n  interval: 1s\n  burst: 0\n");
        assert!(
            e.contains("`rate_limit` in the top level is not supported"),
            "{e}"
        );
    }

    #[test]
    fn yaml_errors_say_where_and_never_quote_values() {
        let e = err("http_server_config:\n  http2: maybe\n");
        assert!(
            e.starts_with("web config /etc/bbcrawl/web.yml: `http_server_config.http2`: "),
            "{e}"
        );
        assert!(e.contains("line 2"), "{e}");
        let e = err(&format!("basic_auth_users: {HASH}\n"));
        assert!(
            e.contains("`basic_auth_users`") && !e.contains("$2y$"),
            "{e}"
        );
        let e = err(&format!("basic_auth_users:\n  bob: [{HASH}]\n"));
        assert!(
            e.contains("`basic_auth_users.bob`") && !e.contains("$2y$"),
            "{e}"
        );
        let e = err("hWkNKCp3fvIx3jKnsaBI\nTuEjdwNS8A2vYdFbiKqr\n");
        assert!(
            e.starts_with("web config /etc/bbcrawl/web.yml: ") && !e.contains("hWkN"),
            "{e}"
        );
        let e = err(&format!(
            "basic_auth_users:\n  bob: {HASH}\n  bob: {HASH}\n"
        ));
        assert!(e.contains("duplicate") && !e.contains("$2y$"), "{e}");
        let e = err("tls_server_config:\n  key: [SECRETKEYMATERIAL]\n");
        assert!(
            e.contains("`tls_server_config.key`") && !e.contains("SECRET"),
            "{e}"
        );
        let e = err("a: 1\n---\nb: 2\n");
        assert!(e.starts_with("web config"), "{e}");
    }

    #[test]
    fn certificate_and_key_go_together() {
        let e = err("tls_server_config:\n  cert_file: server.crt\n");
        assert!(
            e.contains("has a certificate but no key: set key_file"),
            "{e}"
        );
        let e = err("tls_server_config:\n  key_file: server.key\n");
        assert!(e.contains("has no certificate: set cert_file"), "{e}");
        let e = err("tls_server_config:\n  cert_file: \"\"\n  key_file: server.key\n");
        assert!(e.contains("has no certificate"), "{e}");
        let e = err("tls_server_config:\n  client_auth_type: RequireAndVerifyClientCert\n");
        assert!(e.contains("has no certificate"), "{e}");
        let e = err(&tls("  cert: \"-----BEGIN CERTIFICATE-----\"\n"));
        assert!(e.contains("both `cert` and `cert_file`: use one"), "{e}");
        let e = err(&tls("  key: \"x\"\n"));
        assert!(
            e.contains("both `key` and `key_file`") && !e.contains("\"x\""),
            "{e}"
        );
        let e = err("tls_server_config:\n  min_version: TLS13\n  cipher_suites: []\n");
        assert!(
            e.contains("sets min_version, cipher_suites but no certificate"),
            "{e}"
        );
    }

    #[test]
    fn client_auth_rules() {
        let e = err(&tls("  client_auth_type: Sometimes\n"));
        assert!(e.contains("unknown client_auth_type `Sometimes`"), "{e}");
        let e = err(&tls("  client_ca_file: ca.crt\n"));
        assert!(
            e.contains("client_ca_file is set but client_auth_type is NoClientCert"),
            "{e}"
        );
        for mode in ["RequireAndVerifyClientCert", "VerifyClientCertIfGiven"] {
            let e = err(&tls(&format!("  client_auth_type: {mode}\n")));
            assert!(
                e.contains(&format!(
                    "client_auth_type {mode} checks client certificates and needs client_ca_file"
                )),
                "{e}"
            );
        }
        for mode in ["NoClientCert", "RequestClientCert", "RequireAnyClientCert"] {
            let e = err(&tls(&format!(
                "  client_auth_type: {mode}\n  client_allowed_sans: [a]\n"
            )));
            assert!(e.contains(&format!("client_allowed_sans needs client_auth_type RequireAndVerifyClientCert (or VerifyClientCertIfGiven), not {mode}")), "{e}");
        }
        let e = err(&tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: []\n"));
        assert!(e.contains("client_allowed_sans is an empty list"), "{e}");
        // A CA with a non-verifying type is accepted (only hinted to clients), as the toolkit does.
        let ok = cfg(&tls(
            "  client_auth_type: RequireAnyClientCert\n  client_ca_file: ca.crt\n",
        ))
        .unwrap();
        assert!(ok.tls.unwrap().client_ca.is_some());
        let e = err(&tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca: x\n  client_ca_file: ca.crt\n"));
        assert!(e.contains("both `client_ca` and `client_ca_file`"), "{e}");
    }

    #[test]
    fn tls_versions() {
        for (key, name) in [
            ("min_version", "TLS10"),
            ("min_version", "TLS11"),
            ("max_version", "TLS11"),
        ] {
            let e = err(&tls(&format!("  {key}: {name}\n")));
            assert!(
                e.contains(&format!(
                    "{key} {name}: rustls supports TLS 1.2 and 1.3 only"
                )),
                "{e}"
            );
        }
        let e = err(&tls("  min_version: TLS111\n"));
        assert!(
            e.contains("unknown TLS version `TLS111` in min_version"),
            "{e}"
        );
        let e = err(&tls("  min_version: TLS13\n  max_version: TLS12\n"));
        assert!(
            e.contains("min_version TLS13 is above max_version TLS12"),
            "{e}"
        );
        let only12 = cfg(&tls("  min_version: TLS12\n  max_version: TLS12\n"))
            .unwrap()
            .tls
            .unwrap();
        assert!(only12.allows(TlsVersion::Tls12) && !only12.allows(TlsVersion::Tls13));
        let only13 = cfg(&tls("  min_version: TLS13\n")).unwrap().tls.unwrap();
        assert!(!only13.allows(TlsVersion::Tls12) && only13.allows(TlsVersion::Tls13));
    }

    #[test]
    fn cipher_suites_and_curves() {
        let e = err(&tls(
            "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048]\n",
        ));
        assert!(
            e.contains("unknown cipher suite `TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA2048`"),
            "{e}"
        );
        let e = err(&tls(
            "  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA]\n",
        ));
        assert!(e.contains("cipher suite TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA is not implemented by rustls (CBC)"), "{e}");
        let e = err(&tls("  cipher_suites: [TLS_RSA_WITH_AES_128_GCM_SHA256]\n"));
        assert!(
            e.contains("not implemented by rustls (RSA key exchange)"),
            "{e}"
        );
        let e = err(&tls(
            "  max_version: TLS12\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
        ));
        assert!(e.contains("no cipher suite is left"), "{e}");
        let e = err(&tls("  curve_preferences: [CurveP521]\n"));
        assert!(
            e.contains("curve CurveP521 is not implemented by rustls"),
            "{e}"
        );
        let e = err(&tls("  curve_preferences: [CurveP257]\n"));
        assert!(e.contains("unknown curve `CurveP257`"), "{e}");
        // All the suites rustls has, in Go's names.
        let all = CIPHER_SUITES
            .iter()
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ");
        let tls_settings = cfg(&tls(&format!("  cipher_suites: [{all}]\n")))
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls_settings.cipher_suites.len(), CIPHER_SUITES.len());
    }

    #[test]
    fn headers_as_the_toolkit_allows() {
        let e = err("http_server_config:\n  headers:\n    Content-Type: foo\n");
        assert!(
            e.contains("HTTP header `Content-Type` can not be configured"),
            "{e}"
        );
        let e = err("http_server_config:\n  headers:\n    X-Frame-Options: foo\n");
        assert!(
            e.contains(
                "invalid value for X-Frame-Options: expected one of deny, sameorigin, got `foo`"
            ),
            "{e}"
        );
        let e = err("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n");
        assert!(
            e.contains("invalid value for X-Content-Type-Options: expected one of nosniff"),
            "{e}"
        );
        let e = err(
            "http_server_config:\n  headers:\n    X-XSS-Protection: \"1\\r\\nSet-Cookie: a=b\"\n",
        );
        assert!(e.contains("control character"), "{e}");
        // Blank means unset.
        let config = cfg("http_server_config:\n  http2: true\n  headers:\n    X-XSS-Protection: \"\"\n    Content-Security-Policy:\n").unwrap();
        assert!(config.headers.is_empty());
        assert_eq!(config.http2, Some(true));
    }

    #[test]
    fn basic_auth_users_need_bcrypt_hashes() {
        let e = err("basic_auth_users:\n  john: doe\n");
        assert!(
            e.contains("the password of user `john` is not a bcrypt hash") && !e.contains("doe"),
            "{e}"
        );
        let e = err("basic_auth_users:\n  john:\n");
        assert!(e.contains("user `john` has no password hash"), "{e}");
        let e = err(&format!("basic_auth_users:\n  \"jo:hn\": {HASH}\n"));
        assert!(e.contains("has a `:`"), "{e}");
        assert!(looks_like_bcrypt(HASH));
        assert!(looks_like_bcrypt(&HASH.replace("$2y$", "$2b$")));
        assert!(!looks_like_bcrypt(&HASH.replace("$2y$", "$2x$")));
        assert!(!looks_like_bcrypt(&HASH.replace("$10$", "$03$")));
        assert!(!looks_like_bcrypt(&HASH.replace("$10$", "$32$")));
        assert!(!looks_like_bcrypt(&HASH[..59]));
        assert!(!looks_like_bcrypt(&HASH.replace('X', "!")));
        let config = cfg(&format!("basic_auth_users:\n  bob: {HASH}\n")).unwrap();
        assert!(config.tls.is_none());
        assert_eq!(config.basic_auth_users["bob"], HASH);
    }

    #[test]
    fn load_reads_the_file_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("web.yml");
        let e = load(&missing).unwrap_err();
        assert!(matches!(e, WebConfigError::Read { .. }));
        assert!(
            e.to_string().starts_with(&format!(
                "web config {}: cannot read it: ",
                missing.display()
            )),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);

        let path = dir.path().join("web.yml");
        std::fs::write(&path, tls("")).unwrap();
        let config = load(&path).unwrap();
        assert_eq!(
            config.tls.unwrap().cert_file(),
            Some(dir.path().join("server.crt").as_path())
        );

        // An inline key in a file others may read is refused; mode 600 is fine.
        std::fs::write(
            &path,
            "tls_server_config:\n  cert_file: a.crt\n  key: |\n    -----BEGIN PRIVATE KEY-----\n",
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(
                e.contains("holds a private key inline") && e.contains("mode 644"),
                "{e}"
            );
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(load(&path).is_ok());
    }
}
