//! `bbcrawl hooks install` and `bbcrawl hooks status` (SPEC section 13).

use bbcrawl::bitbucket::{BitbucketClient, ClientOptions};
use bbcrawl::config::{Config, Overrides};
use bbcrawl::exit;
use bbcrawl::hooks::install::{self, Installed, Webhook};
use bbcrawl::hooks::HookStatus;
use bbcrawl::source::Source;

use super::{crawl::require_api_config, load_config, CliError, Global, HooksCommand};

pub(super) async fn run(g: &Global, what: HooksCommand) -> Result<u8, CliError> {
    match what {
        HooksCommand::Install { workspace, url } => install_hook(g, workspace, &url).await,
        HooksCommand::Status { workspace } => status(g, workspace).await,
    }
}

/// The configuration with `--workspace W` (if given) as its only workspace.
fn config(g: &Global, workspace: Option<String>) -> Result<Config, CliError> {
    let cfg = load_config(
        g,
        Overrides {
            workspaces: workspace.into_iter().collect(),
            ..Overrides::default()
        },
    )?;
    require_api_config(&cfg)?;
    Ok(cfg)
}

async fn install_hook(g: &Global, workspace: Option<String>, url: &str) -> Result<u8, CliError> {
    let cfg = config(g, workspace)?;
    let [workspace] = cfg.workspaces.as_slice() else {
        return Err(CliError::Usage(format!(
            "{} workspaces are configured: name the one to install the webhook in with --workspace",
            cfg.workspaces.len()
        )));
    };
    let Some(secret_file) = cfg.hooks_secret_file.clone() else {
        return Err(CliError::Usage(
            "set `hooks_secret_file` (or BBCRAWL_HOOKS_SECRET_FILE): the webhook's secret is written there, for the daemon to check deliveries with".into(),
        ));
    };
    let parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "https" | "http") && u.host().is_some());
    let Some(parsed) = parsed else {
        return Err(CliError::Usage(format!(
            "--url {}: not an http(s) URL",
            bbcrawl::human::printable(url)
        )));
    };
    if parsed.username() != "" || parsed.password().is_some() {
        return Err(CliError::Usage(
            "--url must not carry a user or password: deliveries are authenticated by their signature".into(),
        ));
    }
    if parsed.scheme() == "http" {
        tracing::warn!("--url is plain http: deliveries (commit messages, authors) cross the network unencrypted; put the receiver behind TLS");
    }
    if !parsed.path().ends_with(bbcrawl::hooks::HOOK_PATH) {
        tracing::warn!(
            "--url does not end in {}: the receiver answers only there",
            bbcrawl::hooks::HOOK_PATH
        );
    }
    let client = BitbucketClient::new(ClientOptions::from_config(&cfg))?;
    let done = install::install(&client, workspace, parsed.as_str(), &secret_file).await?;
    let (verb, hook) = match &done {
        Installed::Created(h) => ("created", h),
        Installed::Updated { hook, .. } => ("updated", hook),
    };
    println!(
        "{verb} workspace webhook {} in {workspace}: repo:push -> {}",
        hook.uuid,
        bbcrawl::human::printable(&hook.url)
    );
    if let Installed::Updated { removed, .. } = done {
        if removed > 0 {
            println!("removed {removed} other webhook(s) with the same URL");
        }
    }
    println!(
        "a new secret is in {} (0600); a running daemon uses it within a second",
        secret_file.display()
    );
    Ok(exit::SUCCESS)
}

async fn status(g: &Global, workspace: Option<String>) -> Result<u8, CliError> {
    let cfg = config(g, workspace)?;
    let client = BitbucketClient::new(ClientOptions::from_config(&cfg))?;
    for ws in &cfg.workspaces {
        let hooks = install::list(&client, ws).await?;
        let push: Vec<&Webhook> = hooks
            .iter()
            .filter(|h| h.events.iter().any(|e| e == "repo:push"))
            .collect();
        println!("workspace {ws}: {} repo:push webhook(s)", push.len());
        for h in push {
            println!(
                "  {} {} {}{}",
                h.uuid,
                if h.active { "active" } else { "inactive" },
                bbcrawl::human::printable(&h.url),
                match h.secret_set {
                    Some(false) => " (no secret: bbcrawl refuses its deliveries)",
                    _ => "",
                }
            );
        }
    }
    let (seen, from) = match Source::open(&cfg.store) {
        Ok(Source::Daemon(d)) => (
            d.hooks_status()
                .await
                .map_err(bbcrawl::source::SourceError::from)?,
            "the running daemon",
        ),
        Ok(Source::Local(store)) => (
            store.meta::<HookStatus>(bbcrawl::store::keys::META_HOOKS)?,
            "the store (no daemon running)",
        ),
        Err(_) => (None, "nothing (no store yet)"),
    };
    match &cfg.hooks_listen {
        Some(addr) => println!("receiver: hooks_listen = {addr}"),
        None => println!("receiver: off (set hooks_listen and hooks_secret_file)"),
    }
    let Some(seen) = seen else {
        println!("deliveries: none seen, according to {from}");
        return Ok(exit::SUCCESS);
    };
    if let Some(addr) = &seen.listening {
        println!("listening on {addr}");
    }
    if !seen.deliveries.is_empty() {
        let counts: Vec<String> = seen
            .deliveries
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("deliveries since start: {}", counts.join(", "));
    }
    let line = |what: &str, d: &bbcrawl::hooks::DeliverySeen| {
        println!(
            "{what}: {} {}{}{}",
            d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            d.outcome,
            d.repository
                .as_deref()
                .map(|r| format!(" {}", bbcrawl::human::printable(r)))
                .unwrap_or_default(),
            d.request_uuid
                .as_deref()
                .map(|r| format!(" (request {})", bbcrawl::human::printable(r)))
                .unwrap_or_default(),
        )
    };
    match (&seen.last_delivery, &seen.last_accepted) {
        (None, None) => println!("deliveries: none seen, according to {from}"),
        (last, accepted) => {
            if let Some(d) = last {
                line("last delivery", d);
            }
            if let Some(d) = accepted.as_ref().filter(|a| Some(*a) != last.as_ref()) {
                line("last signed delivery", d);
            }
        }
    }
    if let Some(f) = &seen.last_fetch {
        println!(
            "last webhook walk: {} {} {} ({} new commits, {:.2} s after the delivery){}",
            f.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            bbcrawl::human::printable(&f.repository),
            f.result,
            f.new_commits,
            f.seconds,
            f.error
                .as_deref()
                .map(|e| format!(": {}", bbcrawl::human::printable(e)))
                .unwrap_or_default()
        );
    }
    Ok(exit::SUCCESS)
}
