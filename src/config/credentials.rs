//! Credentials: the three kinds Bitbucket accepts, from `[[credentials]]` tables or
//! the `BITBUCKET_*` variables, and [`Secret`], which cannot print itself.

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

pub(super) fn resolve_credentials(
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
