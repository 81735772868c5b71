//! The config file: a bounded read of a regular file, its TOML as written
//! ([`FileConfig`]), error messages that never quote a value, and the refusal of an
//! unprotected file that holds a secret inline.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::credentials::Secret;
use super::error::ConfigError;
use super::resolve::{Found, Origin};
use super::values::non_empty_path;

/// The largest config or secret file bbcrawl reads: 1 MiB. Real ones are a few hundred
/// bytes; the bound keeps a mistaken path (`/dev/urandom`, a log file) from filling memory.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

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

/// The config file as written. Every field is optional so that defaults and the other
/// sources can fill in; numbers are `i64` (TOML's integer type) so that range errors
/// come from our checks, which name the key, rather than from serde.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub(super) workspaces: Option<Vec<String>>,
    pub(super) api_url: Option<String>,
    pub(super) store: Option<PathBuf>,
    pub(super) include: Option<Vec<String>>,
    pub(super) exclude: Option<Vec<String>>,
    /// A string, or a TOML date / offset date-time written without quotes.
    pub(super) since: Option<toml::Value>,
    pub(super) requests_per_hour: Option<i64>,
    pub(super) max_in_flight: Option<i64>,
    pub(super) page_size: Option<i64>,
    pub(super) connect_timeout_seconds: Option<i64>,
    pub(super) request_timeout_seconds: Option<i64>,
    pub(super) max_retries: Option<i64>,
    pub(super) listen: Option<String>,
    pub(super) interval_seconds: Option<i64>,
    pub(super) audit_interval_seconds: Option<i64>,
    pub(super) min_free_disk_mb: Option<i64>,
    pub(super) web_config_file: Option<PathBuf>,
    pub(super) insecure_listen: Option<bool>,
    pub(super) api: Option<bool>,
    pub(super) health_without_auth: Option<bool>,
    pub(super) shard: Option<String>,
    pub(super) hooks_listen: Option<String>,
    pub(super) hooks_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) credentials: Vec<FileCredential>,
}

/// One `[[credentials]]` table as written; which combination is valid is checked later
/// so that the error can name `credentials[N]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileCredential {
    pub(super) access_token: Option<FileSecret>,
    pub(super) access_token_file: Option<PathBuf>,
    pub(super) username: Option<String>,
    pub(super) api_token: Option<FileSecret>,
    pub(super) api_token_file: Option<PathBuf>,
    pub(super) password: Option<FileSecret>,
    pub(super) password_file: Option<PathBuf>,
}

/// An inline secret in the file. Its own `Deserialize` so that a secret of the wrong
/// type (`access_token = 12345`) gives an error that does not quote the value, as
/// serde's default "invalid type: integer `12345`" would.
#[derive(Debug)]
pub(super) struct FileSecret(pub(super) Secret);

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
pub(super) struct LoadedFile {
    /// The file, as named by `--config` or `BBCRAWL_CONFIG`.
    pub(super) path: PathBuf,
    /// Directory that relative paths in the file resolve against.
    pub(super) dir: PathBuf,
    /// The keys as written.
    pub(super) values: FileConfig,
}

impl LoadedFile {
    /// This file as the origin of a value.
    pub(super) fn origin(&self) -> Origin {
        Origin::File(self.path.clone())
    }

    /// `path` as written in the file, made relative to the file's directory.
    pub(super) fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    /// A path-valued key as a source: relative to the file's directory. An empty path
    /// is refused before joining, which would turn it into the directory itself.
    pub(super) fn path(
        &self,
        field: impl FnOnce(&FileConfig) -> Option<&PathBuf>,
    ) -> Option<Found<PathBuf>> {
        let path = field(&self.values)?;
        Some(
            Found::new(self.origin(), path.clone())
                .and_then(|p| Ok(self.resolve(&non_empty_path(p)?))),
        )
    }
}

/// A key of the config file (if there is one) as a source of the key's value.
pub(super) fn in_file<R>(
    file: Option<&LoadedFile>,
    field: impl FnOnce(&FileConfig) -> Option<R>,
) -> Option<Found<R>> {
    let file = file?;
    field(&file.values).map(|raw| Found::new(file.origin(), raw))
}

/// Reads, parses and permission-checks the config file; `key` is the flag or variable
/// that named it.
pub(super) fn read_file(key: &str, path: &Path) -> Result<LoadedFile, ConfigError> {
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
