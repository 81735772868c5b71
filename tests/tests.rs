//! The one integration-test binary: each module tests one behaviour area of
//! SPEC.md through the library or the real `bbcrawl` binary.

mod util;

mod actors;
mod cli;
mod client;
mod config;
mod crash;
mod crawl;
mod daemon;
mod feed;
mod freshness;
mod hooks;
mod hostile;
mod hostile_input;
mod integrity;
mod kit;
mod migrate;
mod model;
mod parquet;
mod precision;
mod query;
mod quirks;
mod ratelimit;
mod secrets;
mod shards;
mod sim_hooks;
mod simulator;
mod soak;
mod store;
mod verify;
mod web;
mod wire;
