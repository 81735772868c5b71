//! `bbcrawl verify`: the connection check, with the same codes as DX's
//! Bitbucket Cloud connector.
//!
//! For each credential and workspace it lists the repositories
//! (`GET /repositories/{workspace}`) and reads one page of one repository's
//! default-branch commits. A failure names one of four codes, explains it,
//! says what to check, and gives a `curl` command that reproduces the call
//! with placeholders instead of the secret.

use serde::Serialize;
use url::Url;

use crate::bitbucket::models::{Page, Repository};
use crate::bitbucket::{ApiError, BitbucketClient, ClientOptions};
use crate::config::{Credential, CredentialKind};

/// Keep-only fields for the listing during verify: `size` lets one page
/// tell how many repositories are visible.
const VERIFY_FIELDS: &str =
    "size,values.uuid,values.slug,values.full_name,values.mainbranch.name,next";

/// The four DX codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyCode {
    /// HTTP 401.
    InvalidCredentials,
    /// HTTP 403.
    InvalidPermissions,
    /// HTTP 404 or nothing visible.
    NoResources,
    /// DNS, TCP, TLS, timeout (or a server that never answered properly).
    ConnectionFailed,
}

impl VerifyCode {
    /// The DX code an API error stands for: 401, 403, 404 or 410 (a
    /// workspace marked as spam), or a connection that failed. `None` for
    /// anything else (a 5xx that outlived its retries, a refused link, …).
    pub fn of(e: &ApiError) -> Option<VerifyCode> {
        match e {
            ApiError::InvalidCredentials { .. } => Some(VerifyCode::InvalidCredentials),
            ApiError::InvalidPermissions { .. } => Some(VerifyCode::InvalidPermissions),
            ApiError::NotFound { .. } | ApiError::Rejected { status: 410, .. } => {
                Some(VerifyCode::NoResources)
            }
            ApiError::Connection { .. } => Some(VerifyCode::ConnectionFailed),
            _ => None,
        }
    }

    /// The code as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyCode::InvalidCredentials => "invalid_credentials",
            VerifyCode::InvalidPermissions => "invalid_permissions",
            VerifyCode::NoResources => "no_resources",
            VerifyCode::ConnectionFailed => "connection_failed",
        }
    }

    /// The process exit code (SPEC section 9).
    pub fn exit_code(self) -> u8 {
        match self {
            VerifyCode::InvalidCredentials => 3,
            VerifyCode::InvalidPermissions => 4,
            VerifyCode::NoResources => 5,
            VerifyCode::ConnectionFailed => 1,
        }
    }
}

/// A workspace that passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceOk {
    /// Workspace name.
    pub workspace: String,
    /// Repositories the credential sees.
    pub repositories: u64,
}

/// Why the check failed, and how to check it by hand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyFailure {
    /// Always false.
    pub ok: bool,
    /// One of the four codes.
    pub code: VerifyCode,
    /// HTTP status, `None` for connection failures.
    pub status: Option<u16>,
    /// The workspace being checked.
    pub workspace: String,
    /// The credential being checked (a label without the secret).
    pub credential: String,
    /// One line: what Bitbucket said.
    pub message: String,
    /// What to check.
    pub hint: String,
    /// A command reproducing the call, with placeholders for secrets.
    pub curl: String,
    /// Scopes the credential has, when Bitbucket said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granted: Option<Vec<String>>,
    /// Scopes the call needs, when Bitbucket said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required: Option<Vec<String>>,
}

/// The outcome of `verify`.
#[derive(Debug, Clone, PartialEq)]
pub enum VerifyReport {
    /// Every credential sees every workspace.
    Ok(Vec<WorkspaceOk>),
    /// The first failure found.
    Failed(Box<VerifyFailure>),
}

impl VerifyReport {
    /// Exit code: 0 or the failure's.
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyReport::Ok(_) => 0,
            VerifyReport::Failed(f) => f.code.exit_code(),
        }
    }

    /// `--format json`: one object.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            VerifyReport::Ok(ws) => serde_json::json!({"ok": true, "workspaces": ws}),
            VerifyReport::Failed(f) => serde_json::to_value(f).unwrap_or_default(),
        }
    }

    /// `--format text`: lines for people.
    pub fn to_text(&self) -> String {
        match self {
            VerifyReport::Ok(ws) => ws
                .iter()
                .map(|w| {
                    format!(
                        "ok: workspace {}: {} {} visible\n",
                        w.workspace,
                        w.repositories,
                        if w.repositories == 1 {
                            "repository"
                        } else {
                            "repositories"
                        }
                    )
                })
                .collect(),
            VerifyReport::Failed(f) => {
                let mut s = format!(
                    "{}: {} (workspace {}, {})\n  {}\n",
                    f.code.as_str(),
                    f.status
                        .map_or_else(|| "no HTTP answer".to_owned(), |s| format!("HTTP {s}")),
                    f.workspace,
                    f.credential,
                    // What Bitbucket (or whatever answered) said: never raw
                    // to a terminal.
                    crate::human::printable(&f.message)
                );
                if let Some(g) = &f.granted {
                    let scopes = list_or_none(g);
                    s.push_str(&format!(
                        "  granted scopes: {}\n",
                        crate::human::printable(&scopes)
                    ));
                }
                if let Some(r) = &f.required {
                    let scopes = list_or_none(r);
                    s.push_str(&format!(
                        "  required scopes: {}\n",
                        crate::human::printable(&scopes)
                    ));
                }
                s.push_str(&format!("  check: {}\n  reproduce: {}\n", f.hint, f.curl));
                s
            }
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "(none)".into()
    } else {
        v.join(", ")
    }
}

/// Runs the check for every credential in `base` against every workspace,
/// stopping at the first failure. `base` supplies timeouts and the API URL;
/// each credential gets its own client so a failure is attributed to it.
pub async fn verify(base: &ClientOptions, workspaces: &[String]) -> VerifyReport {
    let mut results: Vec<WorkspaceOk> = Vec::new();
    for (index, credential) in base.credentials.iter().enumerate() {
        let mut opts = base.clone();
        opts.credentials = vec![credential.clone()];
        // A connection check should answer in seconds, not after ten
        // exponential retries.
        opts.max_retries = opts.max_retries.min(2);
        let label = credential_label(credential, index, base.credentials.len());
        let client = match BitbucketClient::new(opts) {
            Ok(c) => c,
            Err(e) => {
                return VerifyReport::Failed(Box::new(failure(
                    &e,
                    workspaces.first().map_or("", String::as_str),
                    credential,
                    &label,
                    &base.api_url,
                )))
            }
        };
        for ws in workspaces {
            match check_workspace(&client, ws).await {
                Ok(n) => {
                    if let Some(r) = results.iter_mut().find(|r| &r.workspace == ws) {
                        r.repositories = r.repositories.max(n);
                    } else {
                        results.push(WorkspaceOk {
                            workspace: ws.clone(),
                            repositories: n,
                        });
                    }
                }
                Err((e, url)) => {
                    return VerifyReport::Failed(Box::new(failure(
                        &e, ws, credential, &label, &url,
                    )))
                }
            }
        }
    }
    VerifyReport::Ok(results)
}

/// Lists the workspace and reads one commits page; returns the number of
/// visible repositories, or the error with the URL that failed.
async fn check_workspace(client: &BitbucketClient, ws: &str) -> Result<u64, (ApiError, Url)> {
    let mut url = client
        .repositories_url(ws)
        .map_err(|e| (e, client.api_url().clone()))?;
    url.query_pairs_mut()
        .clear()
        .append_pair("pagelen", "100")
        .append_pair("fields", VERIFY_FIELDS);
    let first: Page<Repository> = client
        .get_page(url.clone())
        .await
        .map_err(|e| (e, url.clone()))?;
    let mut count = first.values.len() as u64;
    let mut sample = first
        .values
        .iter()
        .find(|r| r.default_branch().is_some())
        .cloned();
    if let Some(size) = first.size {
        count = size;
    } else if let Some(next) = first.next.clone() {
        // No `size`: count by paging (a listing costs one request per 100).
        let mut pager = client
            .resume::<Repository>(&next)
            .map_err(|e| (e, url.clone()))?;
        while let Some(page) = pager.next_page().await.map_err(|e| (e, url.clone()))? {
            count += page.values.len() as u64;
            if sample.is_none() {
                sample = page
                    .values
                    .iter()
                    .find(|r| r.default_branch().is_some())
                    .cloned();
            }
        }
    }
    if count == 0 {
        return Err((
            ApiError::NotFound {
                message: format!(
                    "workspace {ws} exists but no repository is visible to this credential"
                ),
                shas: vec![],
            },
            url,
        ));
    }
    if let Some(repo) = sample {
        let (Some(slug), Some(branch)) = (repo.slug(), repo.default_branch()) else {
            return Ok(count);
        };
        let mut curl = client
            .commits_url(ws, slug, branch, &[])
            .map_err(|e| (e, url.clone()))?;
        curl.query_pairs_mut()
            .clear()
            .append_pair("pagelen", "1")
            .append_pair("fields", "values.hash,next");
        client
            .get_json::<serde_json::Value>(curl.clone())
            .await
            .map_err(|e| (e, curl))?;
    }
    Ok(count)
}

fn credential_label(c: &Credential, index: usize, total: usize) -> String {
    let n = if total > 1 {
        format!(" #{}", index + 1)
    } else {
        String::new()
    };
    match c.kind() {
        CredentialKind::AccessToken => format!("access token{n}"),
        CredentialKind::ApiToken => format!("API token{n}"),
        CredentialKind::AppPassword => format!("app password{n}"),
    }
}

fn failure(e: &ApiError, ws: &str, cred: &Credential, label: &str, url: &Url) -> VerifyFailure {
    let kind = cred.kind();
    // Whatever is not one of the others: the server could not be used.
    let code = VerifyCode::of(e).unwrap_or(VerifyCode::ConnectionFailed);
    let (granted, required) = match e {
        ApiError::InvalidPermissions {
            granted, required, ..
        } => (granted.clone(), required.clone()),
        _ => (None, None),
    };
    let required = required.or_else(|| {
        (code == VerifyCode::InvalidPermissions).then(|| vec![required_scope(kind).to_owned()])
    });
    VerifyFailure {
        ok: false,
        code,
        status: e.status(),
        workspace: ws.to_owned(),
        credential: label.to_owned(),
        message: e.to_string(),
        hint: hint(code, kind, url),
        curl: curl_command(kind, url),
        granted,
        required,
    }
}

/// The scope Bitbucket requires to read repositories with this kind.
pub fn required_scope(kind: CredentialKind) -> &'static str {
    match kind {
        CredentialKind::ApiToken => "read:repository:bitbucket",
        CredentialKind::AccessToken | CredentialKind::AppPassword => "repository",
    }
}

fn hint(code: VerifyCode, kind: CredentialKind, url: &Url) -> String {
    match (code, kind) {
        (VerifyCode::InvalidCredentials, CredentialKind::AccessToken) => "the access token is wrong, revoked or expired — or it is an Atlassian API token, which must be configured as `username` (your Atlassian e-mail) + `api_token`, not as `access_token`".into(),
        (VerifyCode::InvalidCredentials, CredentialKind::ApiToken) => "use your Atlassian account e-mail as `username` (not the Bitbucket username) and check that the API token is not revoked or expired".into(),
        (VerifyCode::InvalidCredentials, CredentialKind::AppPassword) => "Bitbucket removed app passwords on 2026-07-28: create an Atlassian API token (username = your e-mail); an app password also needs the Bitbucket username, not an e-mail".into(),
        (VerifyCode::InvalidPermissions, CredentialKind::AccessToken) => "give the access token the `repository` scope (Repositories: Read)".into(),
        (VerifyCode::InvalidPermissions, CredentialKind::ApiToken) => "create the API token with the `read:repository:bitbucket` scope".into(),
        (VerifyCode::InvalidPermissions, CredentialKind::AppPassword) => "give the app password the Repositories: Read permission (or move to an API token)".into(),
        (VerifyCode::NoResources, _) => "check the workspace name (the first path segment of https://bitbucket.org/WORKSPACE/) and that this credential can see at least one repository; a repository access token sees only its own repository".into(),
        (VerifyCode::ConnectionFailed, _) => format!("check network access to {}, proxy settings (HTTPS_PROXY), firewalls and `api_url`", crate::bitbucket::client::origin_string(url)),
    }
}

/// `curl` reproducing a call, with placeholders where the secrets go.
pub fn curl_command(kind: CredentialKind, url: &Url) -> String {
    let auth = match kind {
        CredentialKind::AccessToken => "-H 'Authorization: Bearer YOUR_WORKSPACE_TOKEN'",
        CredentialKind::ApiToken => "-u 'YOUR_ATLASSIAN_EMAIL:YOUR_API_TOKEN'",
        CredentialKind::AppPassword => "-u 'YOUR_BITBUCKET_USERNAME:YOUR_APP_PASSWORD'",
    };
    // The URL holds no secret; quote it for the shell.
    format!("curl -sS {auth} '{}'", url.as_str().replace('\'', "'\\''"))
}
