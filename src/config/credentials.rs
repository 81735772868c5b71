//! Credentials: the three kinds Bitbucket accepts, from `[[credentials]]` tables or
//! the `BITBUCKET_*` variables, and [`Secret`], which cannot print itself.
//!
//! Both places describe a credential the same way — a secret for one kind, given
//! inline or as a file, and maybe a user name — so both are read into a [`Draft`] and
//! checked by one function, [`validate`]. What differs is only how messages name the
//! parts (`credentials[0].username` or `BITBUCKET_USERNAME`), which [`Written`] knows,
//! and one deliberate leniency: a `BITBUCKET_USERNAME` next to an access token is
//! ignored with a warning (the variable may be set for other tools in the same shell),
//! while a `username` in an access token's table is an error.

use std::fmt;
use std::path::PathBuf;

use super::error::ConfigError;
use super::file::{read_small_file, FileCredential, FileSecret, LoadedFile, MAX_FILE_BYTES};
use super::resolve::{invalid, Env, Origin};

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
    /// warning to [`Config::warnings`](super::Config::warnings).
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
    /// The credential does not know its position in [`Config::credentials`](super::Config::credentials); access
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
    /// `index` is the 0-based index in [`Config::credentials`](super::Config::credentials) and is printed 1-based
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

/// The settings of one credential kind, in the file and in the environment.
struct KindKeys {
    kind: CredentialKind,
    /// Key of the inline secret in a `[[credentials]]` table; `…_file` names its file.
    key: &'static str,
    /// The same key naming a file.
    key_file: &'static str,
    /// Variable of the inline secret.
    var: &'static str,
    /// Variable naming its file.
    var_file: &'static str,
}

/// Every kind, in the order its secret is looked for.
const KINDS: [KindKeys; 3] = [
    KindKeys {
        kind: CredentialKind::AccessToken,
        key: "access_token",
        key_file: "access_token_file",
        var: "BITBUCKET_ACCESS_TOKEN",
        var_file: "BITBUCKET_ACCESS_TOKEN_FILE",
    },
    KindKeys {
        kind: CredentialKind::ApiToken,
        key: "api_token",
        key_file: "api_token_file",
        var: "BITBUCKET_API_TOKEN",
        var_file: "BITBUCKET_API_TOKEN_FILE",
    },
    KindKeys {
        kind: CredentialKind::AppPassword,
        key: "password",
        key_file: "password_file",
        var: "BITBUCKET_PASSWORD",
        var_file: "BITBUCKET_PASSWORD_FILE",
    },
];

const USERNAME_VAR: &str = "BITBUCKET_USERNAME";

const APP_PASSWORD_WARNING: &str = "app passwords are deprecated: Bitbucket removed them on 2026-07-28; create an Atlassian API token (read:repository:bitbucket) and use it with your Atlassian account e-mail instead";

/// Where a credential is written; decides how messages name its parts.
enum Written {
    /// The `index`-th `[[credentials]]` table of the config file at `origin`.
    Table { index: usize, origin: Origin },
    /// The `BITBUCKET_*` environment variables.
    Env,
}

/// `credentials[N]`, as messages name the N-th table (0-based, as in TOML arrays).
fn table_name(index: usize) -> String {
    format!("credentials[{index}]")
}

/// A credential as written, before any rule is checked.
struct Draft {
    written: Written,
    /// For each kind of [`KINDS`], in order: the inline secret and the secret file.
    secrets: [(Option<Secret>, Option<PathBuf>); 3],
    /// The user name, trimmed (a table may hold an empty one).
    username: Option<String>,
}

/// Where a credential's secret comes from: inline or a file.
enum SecretSource {
    Inline(Secret),
    File(PathBuf),
}

/// The setting that supplied a secret: its key or variable, and where it was set.
struct Supplied {
    key: String,
    origin: Origin,
}

impl Written {
    /// How the deprecation warning names an app password: its table, or its variable.
    fn app_password_name(&self, kind: &KindKeys) -> String {
        match self {
            Written::Table { index, .. } => table_name(*index),
            Written::Env => kind.var.to_string(),
        }
    }

    /// The setting of `kind`'s secret, inline or as a file.
    fn secret_setting(&self, kind: &KindKeys, file: bool) -> Supplied {
        match self {
            Written::Table { index, origin } => Supplied {
                key: format!(
                    "{}.{}",
                    table_name(*index),
                    if file { kind.key_file } else { kind.key }
                ),
                origin: origin.clone(),
            },
            Written::Env => {
                let var = if file { kind.var_file } else { kind.var };
                Supplied {
                    key: var.to_string(),
                    origin: Origin::Env(var),
                }
            }
        }
    }

    /// The user name setting.
    fn username_setting(&self) -> Supplied {
        match self {
            Written::Table { index, origin } => Supplied {
                key: format!("{}.username", table_name(*index)),
                origin: origin.clone(),
            },
            Written::Env => Supplied {
                key: USERNAME_VAR.to_string(),
                origin: Origin::Env(USERNAME_VAR),
            },
        }
    }

    /// `kind`'s secret is given both inline and as a file.
    fn both_forms(&self, kind: &KindKeys) -> ConfigError {
        match self {
            Written::Table { index, origin } => invalid(
                table_name(*index),
                origin,
                format!("set `{}` or `{}`, not both", kind.key, kind.key_file),
            ),
            Written::Env => invalid(
                kind.var,
                &Origin::Env(kind.var),
                format!("set {} or {}, not both", kind.var, kind.var_file),
            ),
        }
    }

    /// No secret is given: an error for a table; for the environment, no credential
    /// unless a user name suggests a forgotten token.
    fn no_secret(&self, username: Option<&str>) -> Result<Option<Credential>, ConfigError> {
        match self {
            Written::Table { index, origin } => Err(invalid(
                table_name(*index),
                origin,
                "needs one of: `access_token` (or `access_token_file`); `username` + `api_token` (or `api_token_file`); `username` + `password` (or `password_file`)",
            )),
            // A user name alone is almost certainly a forgotten token; say so now rather
            // than fail later with "no credentials" or silently use the file's.
            Written::Env if username.is_some() => Err(invalid(
                USERNAME_VAR,
                &Origin::Env(USERNAME_VAR),
                "is set, but neither BITBUCKET_API_TOKEN nor BITBUCKET_PASSWORD (or their _FILE forms) is",
            )),
            Written::Env => Ok(None),
        }
    }

    /// Secrets of more than one kind are given.
    fn several_kinds(&self, supplied: &[Supplied]) -> ConfigError {
        match self {
            Written::Table { index, origin } => invalid(
                table_name(*index),
                origin,
                "holds more than one kind of credential (access token, API token, app password): use one `[[credentials]]` table per credential",
            ),
            Written::Env => {
                let names: Vec<&str> = supplied.iter().map(|s| s.key.as_str()).collect();
                let first = &supplied[0];
                invalid(
                    first.key.as_str(),
                    &first.origin,
                    format!(
                        "the environment describes more than one credential ({}): set only one of BITBUCKET_ACCESS_TOKEN, BITBUCKET_API_TOKEN, BITBUCKET_PASSWORD",
                        names.join(", ")
                    ),
                )
            }
        }
    }

    /// An access token comes with a user name, which Bearer has no place for.
    fn username_with_access_token(&self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        match self {
            Written::Table { .. } => {
                let setting = self.username_setting();
                Err(invalid(
                    setting.key,
                    &setting.origin,
                    "an access token is sent as Bearer without a user name: remove `username`",
                ))
            }
            // Not an error: the variable may be set for other tools in the same shell.
            Written::Env => {
                warnings.push(
                    "BITBUCKET_USERNAME is ignored: an access token (BITBUCKET_ACCESS_TOKEN) is sent without a user name"
                        .to_string(),
                );
                Ok(())
            }
        }
    }

    /// How a message names the secret that needs a user name: the table's key
    /// (`` `api_token` ``) or the variable that was set.
    fn needing_username(&self, kind: &KindKeys, secret: &Supplied) -> String {
        match self {
            Written::Table { .. } => format!("`{}`", kind.key),
            Written::Env => secret.key.clone(),
        }
    }

    /// Where to put an API token instead of an app password.
    fn api_token_setting(&self) -> &'static str {
        match self {
            Written::Table { .. } => "an API token (`api_token`)",
            Written::Env => "BITBUCKET_API_TOKEN",
        }
    }
}

/// The one set of rules for a credential, wherever it is written: exactly one kind's
/// secret, inline or from a file; a user name exactly when the kind needs one, shaped
/// as the kind needs it; a non-empty secret. `Ok(None)`: the environment holds no
/// credential.
fn validate(draft: Draft, warnings: &mut Vec<String>) -> Result<Option<Credential>, ConfigError> {
    let written = &draft.written;
    let mut given: Vec<(&KindKeys, Supplied, SecretSource)> = Vec::new();
    for (kind, secret) in KINDS.iter().zip(draft.secrets) {
        match secret {
            (Some(_), Some(_)) => return Err(written.both_forms(kind)),
            (Some(inline), None) => given.push((
                kind,
                written.secret_setting(kind, false),
                SecretSource::Inline(inline),
            )),
            (None, Some(path)) => given.push((
                kind,
                written.secret_setting(kind, true),
                SecretSource::File(path),
            )),
            (None, None) => {}
        }
    }
    if given.len() > 1 {
        let supplied: Vec<Supplied> = given.into_iter().map(|(_, s, _)| s).collect();
        return Err(written.several_kinds(&supplied));
    }
    let Some((kind, supplied, source)) = given.pop() else {
        return written.no_secret(draft.username.as_deref());
    };

    let username_setting = written.username_setting();
    let username_error = |message: String| {
        invalid(
            username_setting.key.as_str(),
            &username_setting.origin,
            message,
        )
    };
    let required_username = |who: &str| {
        draft
            .username
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                username_error(format!(
                    "required with {}: {who}",
                    written.needing_username(kind, &supplied)
                ))
            })
    };
    let secret = |source| read_secret(&supplied.key, &supplied.origin, source);
    let credential = match kind.kind {
        CredentialKind::AccessToken => {
            if draft.username.is_some() {
                written.username_with_access_token(warnings)?;
            }
            Credential::AccessToken {
                token: secret(source)?,
            }
        }
        CredentialKind::ApiToken => {
            let email = required_username("your Atlassian account e-mail")?;
            if !looks_like_email(&email) {
                return Err(username_error(format!("API tokens need your Atlassian account e-mail as username, not a Bitbucket username (got {email:?})")));
            }
            Credential::ApiToken {
                email,
                token: secret(source)?,
            }
        }
        CredentialKind::AppPassword => {
            let username = required_username("your Bitbucket username")?;
            if username.contains('@') {
                return Err(username_error(format!(
                    "app passwords need your Bitbucket username, not an e-mail (got {username:?}); with an e-mail, use {}",
                    written.api_token_setting()
                )));
            }
            let credential = Credential::AppPassword {
                username,
                password: secret(source)?,
            };
            warnings.push(format!(
                "{} ({}): {APP_PASSWORD_WARNING}",
                written.app_password_name(kind),
                credential.label()
            ));
            credential
        }
    };
    Ok(Some(credential))
}

/// The single credential the `BITBUCKET_*` variables describe, as written.
fn env_draft(env: &Env<'_>) -> Draft {
    Draft {
        written: Written::Env,
        secrets: KINDS.map(|kind| {
            (
                env.get(kind.var).map(Secret::new),
                env.get(kind.var_file).map(PathBuf::from),
            )
        }),
        username: env.get(USERNAME_VAR),
    }
}

/// One `[[credentials]]` table as written; secret files resolve against the file's
/// directory.
fn table_draft(file: &LoadedFile, index: usize, table: &FileCredential) -> Draft {
    let secret = |inline: &Option<FileSecret>, path: &Option<PathBuf>| {
        (
            inline.as_ref().map(|s| s.0.clone()),
            path.as_deref().map(|p| file.resolve(p)),
        )
    };
    Draft {
        written: Written::Table {
            index,
            origin: file.origin(),
        },
        secrets: [
            secret(&table.access_token, &table.access_token_file),
            secret(&table.api_token, &table.api_token_file),
            secret(&table.password, &table.password_file),
        ],
        username: table.username.as_deref().map(|u| u.trim().to_string()),
    }
}

/// The credentials to use: the environment's if it describes one (it replaces the
/// file's, whose secret files are then not read), else the file's tables in order.
pub(super) fn resolve_credentials(
    env: &Env<'_>,
    file: Option<&LoadedFile>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Credential>, ConfigError> {
    if let Some(credential) = validate(env_draft(env), warnings)? {
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
    // A table without a secret is an error, never `None`, so nothing is dropped here.
    f.values
        .credentials
        .iter()
        .enumerate()
        .filter_map(|(i, table)| validate(table_draft(f, i, table), warnings).transpose())
        .collect()
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
