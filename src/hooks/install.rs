//! `bbcrawl hooks install` and `bbcrawl hooks status`: the workspace
//! webhook Bitbucket sends `repo:push` deliveries with.
//!
//! `install` is idempotent per URL: it lists the workspace's webhooks
//! (`GET /2.0/workspaces/{workspace}/hooks`), updates the first one with
//! that URL (`PUT …/hooks/{uid}`) and deletes any other with the same URL,
//! or creates one (`POST …/hooks`). Every run sets a fresh secret: it is
//! written beside `hooks_secret_file` first (0600, synced), sent to
//! Bitbucket, and only once Bitbucket accepted it renamed over the file —
//! so a refused request leaves the file as it was, and a daemon that is
//! running picks the new secret up within a second (the replaced one is
//! still accepted for ten minutes).

use std::path::Path;

use reqwest::Method;
use serde::{Deserialize, Serialize};

use super::secret::{generate_secret, StagedSecret};
use crate::bitbucket::{ApiError, BitbucketClient};

/// The description bbcrawl gives its webhooks.
pub const DESCRIPTION: &str = "bbcrawl: commits seconds after a push";

/// A webhook as Bitbucket lists it (the secret is never sent back).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Webhook {
    /// Braced uuid.
    pub uuid: String,
    /// Where deliveries go.
    pub url: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Whether Bitbucket sends deliveries.
    #[serde(default)]
    pub active: bool,
    /// The events it fires on.
    #[serde(default)]
    pub events: Vec<String>,
    /// Whether a secret is set (it cannot be read back).
    #[serde(default)]
    pub secret_set: Option<bool>,
}

/// What `install` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Installed {
    /// A new webhook.
    Created(Webhook),
    /// The existing one with that URL, updated (`removed` duplicates of it
    /// deleted).
    Updated {
        /// The webhook.
        hook: Webhook,
        /// Other webhooks with the same URL, deleted.
        removed: usize,
    },
}

/// Why `install` or `status` failed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The API refused or failed.
    #[error("workspace {workspace}: {source}")]
    Api {
        /// The workspace.
        workspace: String,
        /// What the API said.
        #[source]
        source: ApiError,
    },
    /// The secret could not be written.
    #[error("cannot write the webhook secret to {path}: {source}")]
    Secret {
        /// `hooks_secret_file`.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl InstallError {
    /// The exit code: the API error's (3 credentials, 4 permissions or
    /// scope, 5 not found, else 1), 1 for the file.
    pub fn exit_code(&self) -> u8 {
        match self {
            InstallError::Api { source, .. } => source.exit_code(),
            InstallError::Secret { .. } => crate::exit::RUNTIME,
        }
    }
}

/// Every webhook of a workspace (following `next`, at most 50 pages).
pub async fn list(client: &BitbucketClient, workspace: &str) -> Result<Vec<Webhook>, InstallError> {
    let api = |source| InstallError::Api {
        workspace: workspace.to_owned(),
        source,
    };
    let mut url = client.workspace_hooks_url(workspace, None).map_err(api)?;
    url.query_pairs_mut().append_pair("pagelen", "100");
    let mut hooks = Vec::new();
    let mut next = Some(url);
    for _ in 0..50 {
        let Some(url) = next.take() else { break };
        let page = client.get_page::<Webhook>(url).await.map_err(api)?;
        hooks.extend(page.values);
        next = match page.next {
            Some(n) => Some(client.check_link(&n).map_err(api)?),
            None => None,
        };
    }
    Ok(hooks)
}

/// Creates or updates the workspace webhook for `repo:push` to `url`, with
/// a fresh secret that ends up in `secret_file`.
pub async fn install(
    client: &BitbucketClient,
    workspace: &str,
    url: &str,
    secret_file: &Path,
) -> Result<Installed, InstallError> {
    let api = |source| InstallError::Api {
        workspace: workspace.to_owned(),
        source,
    };
    let existing: Vec<Webhook> = list(client, workspace)
        .await?
        .into_iter()
        .filter(|h| h.url == url)
        .collect();
    let secret = generate_secret();
    let staged =
        StagedSecret::write(secret_file, &secret).map_err(|source| InstallError::Secret {
            path: secret_file.display().to_string(),
            source,
        })?;
    let body = serde_json::json!({
        "description": DESCRIPTION,
        "url": url,
        "active": true,
        "secret": secret,
        "events": ["repo:push"],
    });
    let commit = |staged: StagedSecret| {
        staged.commit().map_err(|source| InstallError::Secret {
            path: secret_file.display().to_string(),
            source,
        })
    };
    match existing.split_first() {
        Some((first, rest)) => {
            let target = client
                .workspace_hooks_url(workspace, Some(&first.uuid))
                .map_err(api)?;
            let hook: Webhook = client
                .send_json(Method::PUT, target, &body)
                .await
                .map_err(api)?;
            // Bitbucket signs with the new secret from now on.
            commit(staged)?;
            let mut removed = 0;
            for dup in rest {
                let target = client
                    .workspace_hooks_url(workspace, Some(&dup.uuid))
                    .map_err(api)?;
                client.delete(target).await.map_err(api)?;
                removed += 1;
            }
            Ok(Installed::Updated { hook, removed })
        }
        None => {
            let target = client.workspace_hooks_url(workspace, None).map_err(api)?;
            let hook: Webhook = client
                .send_json(Method::POST, target, &body)
                .await
                .map_err(api)?;
            commit(staged)?;
            Ok(Installed::Created(hook))
        }
    }
}
