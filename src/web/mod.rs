//! The daemon's endpoint security, in the Prometheus exporters' convention
//! (issue 15): the exporter toolkit's web configuration file (`config`),
//! TLS with rustls and certificates re-read when they change (`tls`), a
//! TLS listener for axum (`listener`), basic auth with bcrypt (`auth`),
//! and the checks that settle it all before the daemon starts (`endpoint`).

pub mod auth;
pub mod config;
pub mod endpoint;
pub mod listener;
pub mod tls;

pub use auth::{BasicAuth, Verdict};
pub use endpoint::{Endpoint, EndpointConfig, EndpointError};
pub use listener::TlsListener;
pub use tls::Tls;
