//! The one integration-test binary: each module tests one behaviour area of
//! SPEC.md through the library or the real `bbcrawl` binary.

mod util;

mod cli;
mod client;
mod crash;
mod crawl;
mod config;
mod ratelimit;
mod secrets;
mod simulator;
mod store;
mod verify;
mod wire;
