//! bbcrawl copies the default-branch commit history of every repository in a
//! Bitbucket Cloud workspace into an embedded store and keeps it current.
//!
//! Module map: where the data comes in, where it is stored, where it is
//! served. Arrows point down the list, never back up (the binary's `cli`
//! module sits on top of all of it).
//!
//! Serving questions:
//! - [`daemon`]    `bbcrawl run`: the pass loop, `/healthz`, the HTTP endpoint
//!   (metrics and one handler for the query API) and its address file.
//! - [`source`]    where the CLI's question is answered: the store, or the daemon holding it.
//! - [`query`]     a question ([`query::Request`]: what, filter, format; its URL form) and
//!   the one [`query::answer`] the CLI and the daemon both call; how answers print,
//!   and the Parquet export ([`query::parquet`]).
//! - [`demo`]      `bbcrawl demo`: the whole pipeline against the built-in simulator.
//! - [`progress`]  what `sync` shows while it runs: a live bar or one line per repository.
//! - [`verify`]    the `verify` connection check and its DX-compatible error codes.
//! - [`hooks`]     Bitbucket `repo:push` webhooks: the signed receiver on its own listener,
//!   the walks it schedules (through the crawl's writer and locks), `hooks install`.
//! - [`web`]       the endpoint's TLS and basic auth, from the exporter toolkit's web config file.
//!
//! Crawling:
//! - [`actors`]    the crawl: supervisor, repository and writer actors (the only place
//!   actix appears); the writer owns every store write and flush.
//! - [`schedule`]  which repositories a pass crawls, in what order and how far (slug
//!   filter, change gate, audits).
//! - [`shard`]     which repositories are this instance's when several split a workspace
//!   (`shard = "I/N"`: a SHA-256 of the uuid, mod N).
//! - [`bitbucket`] the API: models, client (auth, paging, origin and cycle checks,
//!   retries), rate budget.
//! - [`store`]     everything sled: key layout, encoding, schema, atomic batches.
//!
//! Shared by all:
//! - [`record`]    the domain: commits (SPEC section 4), repositories and their walks,
//!   authors — what every layer passes around.
//! - [`config`]    file + environment + flags → one validated `Config`; secrets wrapped.
//! - [`telemetry`] every metric's name, unit, description and buckets; the recorder.
//! - [`exit`]      exit codes (SPEC section 9); each error type says its own.
//! - [`human`]     text and durations as people read them (terminal-safe text, widths).
//! - [`panic`]     no panic reaches the user: one `error:` line, exit 1 for a damaged store.
//! - [`simulator`] the fake Bitbucket used by `demo`, `simulate`, tests and benches.

pub mod actors;
pub mod bitbucket;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod exit;
pub mod hooks;
pub mod human;
pub mod panic;
pub mod progress;
#[cfg(test)]
mod proptests;
pub mod query;
pub mod record;
pub mod schedule;
pub mod shard;
pub mod simulator;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod verify;
pub mod web;
