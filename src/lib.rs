//! bbcrawl copies the default-branch commit history of every repository in a
//! Bitbucket Cloud workspace into an embedded store and keeps it current.
//!
//! Module map (arrows point down, never back up):
//! - [`config`]    file + environment + flags → one validated `Config`; secrets wrapped.
//! - [`demo`]      `bbcrawl demo`: the whole pipeline against the built-in simulator.
//! - [`human`]     durations as people read them (summaries, progress, log lines).
//! - [`progress`]  what `sync` shows while it runs: a live bar or one line per repository.
//! - [`output`]    how `query`, `show` and `export` print: table, json, ndjson, csv.
//! - [`query`]     questions about the stored commits, shared by the CLI and the daemon.
//! - [`record`]    the domain: `CommitRecord` and its parts (SPEC section 4).
//! - [`bitbucket`] the API: models, client (auth, pagination, origin check), retry, rate budget.
//! - [`store`]     everything sled: key layout, schema version, atomic page writes, reachability.
//! - [`actors`]    supervisor, repository and writer actors: the crawl (the only place actix appears).
//! - [`verify`]    the `verify` connection check and its DX-compatible error codes.
//! - [`remote`]    `query`/`show`/`export` asking a running daemon when it holds the store.
//! - [`schedule`]  which repositories a pass crawls, in what order and how far (slug filter, change gate, audits).
//! - [`simulator`] the fake Bitbucket used by `demo`, `simulate`, tests and benches.
//! - [`telemetry`] every metric's name, unit, description and buckets; the Prometheus recorder.
//! - [`daemon`]    `bbcrawl run`: a pass every interval, graceful stop, the HTTP endpoint
//!   (metrics, health, query API) and the address file `query` uses to find it.

pub mod actors;
pub mod bitbucket;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod human;
pub mod output;
pub mod progress;
pub mod query;
pub mod record;
pub mod remote;
pub mod schedule;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod verify;
