//! `bbcrawl run`: the daemon (SPEC sections 3 and 7).
//!
//! - `passes`: a sync pass at start, then one `interval` after the
//!   previous one ended (passes never overlap); each logged, counted and
//!   reported to `/healthz` (`health`).
//! - `api`: one HTTP endpoint on `listen`, served on the same runtime:
//!   `GET /metrics`, `GET /healthz`, and the query API under `/api/v1/`,
//!   answering with the same function the CLI calls.
//! - `address`: the address file `<store>/daemon.json`, written once
//!   listening and removed on a graceful stop, so that `query`, `show` and
//!   `export` can find the daemon that holds the store.
//! - Graceful stop: on the shutdown signal the pass stops fetching, pages in
//!   flight are stored and the writer flushes (bounded by
//!   [`crate::actors::DRAIN_DEADLINE`]), the HTTP server stops, the address
//!   file goes.
//!
//! A pass that fails as a whole (401, 403, a listing that cannot be read)
//! is logged, counted, turns `/healthz` to 503, and the next interval tries
//! again.

mod address;
mod api;
pub use api::{ADMIN_BACKUP, ADMIN_HOOKS, AUTH_FAILURES};
mod health;
mod passes;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

pub use address::{
    clear_stale_address, read_address, DaemonAddress, ADDRESS_FILE, PID_HEADER, STORE_ID_HEADER,
};

use crate::actors::{Crawler, PassObserver, PassOptions};
use crate::bitbucket::BitbucketClient;
use crate::store::Store;
use api::AppState;
use health::Health;
use passes::passes;

/// How long in-flight HTTP responses (a long export) may take to finish
/// once the daemon stops.
const SERVER_DEADLINE: Duration = Duration::from_secs(2);

/// How often the TLS certificate and key files are looked at for a
/// renewal besides at each handshake.
const TLS_REFRESH_EVERY: Duration = Duration::from_secs(5);

/// How often histograms are compacted (the recorder's upkeep).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What `run` needs besides the client and the store.
pub struct DaemonOptions {
    /// Address of the HTTP endpoint (port 0 picks one; the address file
    /// holds the real one).
    pub listen: SocketAddr,
    /// Pause between the end of a pass and the start of the next.
    pub interval: Duration,
    /// What each pass covers.
    pub pass: PassOptions,
    /// `min_free_disk_mb` in bytes (`None`: automatic, `store::disk_floor`).
    pub min_free_disk: Option<u64>,
    /// Receives pass events (log lines per repository).
    pub observer: Arc<dyn PassObserver>,
    /// TLS, basic auth, headers and the API switch of the endpoint.
    pub endpoint: crate::web::Endpoint,
    /// The webhook receiver (`hooks_listen`), if configured.
    pub hooks: Option<HooksOptions>,
}

/// The webhook receiver's listener and secret (SPEC section 13).
pub struct HooksOptions {
    /// Its own address, apart from the endpoint's.
    pub listen: SocketAddr,
    /// The HMAC secret deliveries must be signed with.
    pub secret: Arc<crate::hooks::HookSecret>,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The address file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    AddressFile {
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The signal handlers could not be installed.
    #[error("cannot watch for SIGTERM / SIGINT: {0}")]
    Signals(#[source] io::Error),
}

impl DaemonError {
    /// The exit code: 1 (a configuration the daemon cannot use is refused,
    /// exit 2, before it starts).
    pub fn exit_code(&self) -> u8 {
        crate::exit::RUNTIME
    }
}

/// The signal that asked a command to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (systemd, `kill`).
    Term,
    /// SIGINT (Ctrl-C).
    Int,
}

impl StopSignal {
    /// `SIGTERM` or `SIGINT`.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
        }
    }

    /// The exit code of a command it stopped (SPEC section 9: 128 + the
    /// signal's number, as a shell reports a process the signal killed).
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Term => 143,
            StopSignal::Int => 130,
        }
    }
}

/// Resolves when SIGTERM or SIGINT arrives, with which one.
pub fn shutdown_signal() -> Result<impl std::future::Future<Output = StopSignal> + Send, DaemonError>
{
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;
    Ok(async move {
        let which = tokio::select! {
            _ = term.recv() => StopSignal::Term,
            _ = int.recv() => StopSignal::Int,
        };
        tracing::info!(signal = which.name(), "stopping");
        which
    })
}

/// Runs the daemon until `shutdown` resolves: passes every interval, the
/// HTTP endpoint, the address file. Must be called inside an actix
/// `System`. Returns after a graceful stop.
pub async fn run(
    client: BitbucketClient,
    store: Arc<Store>,
    opts: DaemonOptions,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = StopSignal> + Send + 'static,
) -> Result<(), DaemonError> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        // Nobody listening means everything already stopped.
        let _ = stop_tx.send(true);
        // Keep the sender alive: a dropped sender would read as "stop" too
        // early to some waiters and never to others.
        std::future::pending::<()>().await;
    });

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: opts.listen,
            source,
        })?;
    let addr = listener
        .local_addr()
        .map_err(|source| DaemonError::Listen {
            addr: opts.listen,
            source,
        })?;
    let health = Arc::new(RwLock::new(Health::default()));
    let crawler = Arc::new(Crawler::start(
        client.clone(),
        Arc::clone(&store),
        Arc::clone(&opts.observer),
    ));
    let hooks = match &opts.hooks {
        Some(h) => {
            Some(start_hooks(h, &crawler, &store, &client, &opts.pass, stop_rx.clone()).await?)
        }
        None => None,
    };
    let token = {
        use rand::Rng;
        format!("{:032x}", rand::thread_rng().gen::<u128>())
    };
    let endpoint = &opts.endpoint;
    let scheme = endpoint.scheme();
    let state = AppState {
        admin_token: Arc::new(token.clone()),
        store: Arc::clone(&store),
        health: Arc::clone(&health),
        metrics: metrics.clone(),
        client: client.clone(),
        hooks: hooks.as_ref().map(|h| Arc::clone(&h.status)),
        web: Arc::new(api::WebState {
            auth: endpoint.auth.clone(),
            headers: endpoint.headers.clone(),
            api: endpoint.api,
            health_without_auth: endpoint.health_without_auth,
        }),
    };
    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stopped = async {
        let _ = server_stop_rx.await;
    };
    let router = api::router(state);
    // With TLS, the address file also carries the certificate being
    // served, for the CLI to trust exactly that one; a renewal rewrites it.
    let (server, reloads) =
        match &endpoint.tls {
            Some(tls) => {
                let listener = crate::web::TlsListener::new(listener, tls.server_config())
                    .map_err(|source| DaemonError::Listen {
                        addr: opts.listen,
                        source,
                    })?;
                let server = tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await
                });
                (server, Some(tls.subscribe()))
            }
            None => {
                let server = tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(stopped)
                        .await
                });
                (server, None)
            }
        };
    // With TLS, the CLI's own client identity, accepted whatever
    // `client_auth_type` asks.
    let local_client = match &endpoint.tls {
        Some(tls) => {
            let client =
                crate::web::tls::LocalClient::generate().map_err(|e| DaemonError::Listen {
                    addr: opts.listen,
                    source: io::Error::other(format!(
                        "cannot make the local client certificate: {e}"
                    )),
                })?;
            tls.accept_local_client(client.cert_der.clone());
            Some(Arc::new(client))
        }
        None => None,
    };
    let leaf = endpoint.tls.as_ref().map(|t| t.leaf_der());
    let tls_address = leaf.as_deref().zip(local_client.as_deref());
    let address_file =
        address::write_address(store.path(), &DaemonAddress::new(addr, &token, tls_address))?;
    // The files are also looked at every few seconds, not only when a
    // client connects: the CLI's next connection then already trusts the
    // renewed certificate.
    let rewriting = reloads.zip(endpoint.tls.clone()).map(|(mut reloads, tls)| {
        let (dir, token) = (store.path().to_path_buf(), token.clone());
        let local_client = local_client.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TLS_REFRESH_EVERY);
            loop {
                tokio::select! {
                    changed = reloads.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let leaf = reloads.borrow_and_update().clone();
                        let tls = local_client.as_deref().map(|c| (leaf.as_slice(), c));
                        if let Err(e) = address::write_address(&dir, &DaemonAddress::new(addr, &token, tls)) {
                            tracing::warn!(error = %e, "cannot record the renewed certificate for the CLI");
                        }
                    }
                    _ = tick.tick() => {
                        let tls = tls.clone();
                        let _ = tokio::task::spawn_blocking(move || tls.refresh()).await;
                    }
                }
            }
        })
    });
    tracing::info!(
        %addr,
        tls = endpoint.tls.is_some(),
        basic_auth = endpoint.auth.is_some(),
        api = endpoint.api,
        "serving /metrics, /healthz{} on {scheme}://{addr}",
        if endpoint.api { " and /api/v1" } else { "" }
    );
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });

    passes(&crawler, &store, &opts, &health, &mut stop_rx).await;

    // Stop serving: in-flight answers get a moment to finish.
    let _ = server_stop_tx.send(());
    match tokio::time::timeout(SERVER_DEADLINE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "the HTTP server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server task failed"),
        Err(_) => tracing::warn!("HTTP answers still in flight were cut off"),
    }
    upkeep.abort();
    if let Some(h) = hooks {
        match tokio::time::timeout(SERVER_DEADLINE, h.server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => {
                tracing::warn!(error = %e, "the webhook listener ended with an error")
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "the webhook listener task failed"),
            Err(_) => tracing::warn!("webhook answers still in flight were cut off"),
        }
    }
    if let Some(r) = rewriting {
        r.abort();
    }
    if let Err(e) = std::fs::remove_file(&address_file) {
        tracing::warn!(path = %address_file.display(), error = %e, "cannot remove the address file");
    }
    tracing::info!("stopped");
    Ok(())
}

/// The running webhook receiver.
struct Hooks {
    status: Arc<std::sync::Mutex<crate::hooks::HookStatus>>,
    server: tokio::task::JoinHandle<io::Result<()>>,
}

/// Binds `hooks_listen`, starts the scheduler and serves `POST
/// /hooks/bitbucket` there until the daemon stops (then walks in flight
/// stop between pages, as a pass does).
async fn start_hooks(
    h: &HooksOptions,
    crawler: &Arc<Crawler>,
    store: &Arc<Store>,
    client: &BitbucketClient,
    pass: &PassOptions,
    mut stop_rx: watch::Receiver<bool>,
) -> Result<Hooks, DaemonError> {
    use crate::hooks::{HookStatus, Receiver, Scheduler, SchedulerOptions};
    let listen_error = |source| DaemonError::Listen {
        addr: h.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(h.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let mut status: HookStatus = store
        .meta(crate::store::keys::META_HOOKS)
        .ok()
        .flatten()
        .unwrap_or_default();
    status.listening = Some(addr.to_string());
    let status = Arc::new(std::sync::Mutex::new(status));
    let stop: crate::actors::StopFlag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scheduler = Scheduler::start(
        Arc::clone(crawler),
        Arc::clone(store),
        client.clone(),
        SchedulerOptions {
            slugs: pass.slugs.clone(),
            shard: pass.shard,
            since: pass.since,
            stop: Arc::clone(&stop),
            concurrency: pass.concurrency,
        },
        Arc::clone(&status),
    );
    let receiver = Arc::new(Receiver::new(
        Arc::clone(&h.secret),
        &pass.workspaces,
        scheduler.clone(),
        Arc::clone(&status),
    ));
    let router = crate::hooks::router(receiver);
    let stopped = async move {
        passes::stopped(&mut stop_rx).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        scheduler.stop();
    };
    let listener = crate::hooks::listener::BoundedListener::new(listener);
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
    });
    tracing::info!(%addr, "receiving Bitbucket webhooks at http://{addr}{}", crate::hooks::HOOK_PATH);
    Ok(Hooks { status, server })
}
