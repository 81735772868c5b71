//! The one integration-test binary: each module tests one behaviour area of
//! SPEC.md through the library or the real `bbcrawl` binary.

mod config;
mod simulator;
