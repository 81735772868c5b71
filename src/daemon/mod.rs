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
pub use api::ADMIN_BACKUP;
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
    let crawler = Crawler::start(
        client.clone(),
        Arc::clone(&store),
        Arc::clone(&opts.observer),
    );
    let token = {
        use rand::Rng;
        format!("{:032x}", rand::thread_rng().gen::<u128>())
    };
    let state = AppState {
        admin_token: Arc::new(token.clone()),
        store: Arc::clone(&store),
        health: Arc::clone(&health),
        metrics: metrics.clone(),
        client: client.clone(),
    };
    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, api::router(state))
            .with_graceful_shutdown(async {
                let _ = server_stop_rx.await;
            })
            .await
    });
    let address_file = address::write_address(store.path(), addr, &token)?;
    tracing::info!(%addr, "serving /metrics, /healthz and /api/v1 on http://{addr}");
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
    if let Err(e) = std::fs::remove_file(&address_file) {
        tracing::warn!(path = %address_file.display(), error = %e, "cannot remove the address file");
    }
    tracing::info!("stopped");
    Ok(())
}
