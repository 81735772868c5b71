//! How the daemon's endpoint is exposed, settled before the daemon starts
//! (so that every mistake is exit 2 before anything runs): the web config
//! file read and checked, the certificate and key loaded, and a
//! non-loopback `listen` without TLS or a password refused unless
//! `insecure_listen = true` says so.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};

use super::auth::BasicAuth;
use super::config::{self, WebConfigError};
use super::tls::Tls;

/// The endpoint's security, ready for the daemon.
pub struct Endpoint {
    /// TLS, when the web config has `tls_server_config`.
    pub tls: Option<Tls>,
    /// Basic auth, when the web config has `basic_auth_users`.
    pub auth: Option<Arc<BasicAuth>>,
    /// `http_server_config.headers`, added to every answer.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `/api/v1/*` is served (`api`).
    pub api: bool,
    /// `/healthz` skips basic auth (`health_without_auth`).
    pub health_without_auth: bool,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("tls", &self.tls.is_some())
            .field("auth", &self.auth.is_some())
            .field("api", &self.api)
            .finish()
    }
}

/// Why the endpoint cannot be set up (every one a configuration error:
/// exit 2).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The web config file or its certificates.
    #[error(transparent)]
    Web(#[from] WebConfigError),
    /// A non-loopback `listen` with neither TLS nor a password.
    #[error("refusing to listen on {listen}: it is not a loopback address, and without a web config file (`web_config_file`, `--web.config.file`, BBCRAWL_WEB_CONFIG_FILE) anyone who reaches the port reads every commit message and author e-mail through /api/v1 and the metrics. Add a web config with `tls_server_config` and `basic_auth_users` (see config/web-config.example.yml), listen on 127.0.0.1, or set `insecure_listen = true` to accept the exposure")]
    Exposed {
        /// The address.
        listen: SocketAddr,
    },
    /// A header of `http_server_config.headers` that HTTP cannot carry.
    #[error("web config {}: the header {name} cannot be sent: {why}", path.display())]
    Header {
        /// The web config file.
        path: PathBuf,
        /// The header.
        name: String,
        /// Why not.
        why: String,
    },
}

impl EndpointError {
    /// The exit code: 2, a configuration error.
    pub fn exit_code(&self) -> u8 {
        crate::exit::USAGE
    }
}

/// What the configuration says about the endpoint.
#[derive(Debug, Clone)]
pub struct EndpointConfig<'a> {
    /// `listen`.
    pub listen: SocketAddr,
    /// `web_config_file`.
    pub web_config_file: Option<&'a Path>,
    /// `insecure_listen`.
    pub insecure_listen: bool,
    /// `api`.
    pub api: bool,
    /// `health_without_auth`.
    pub health_without_auth: bool,
}

impl Endpoint {
    /// Reads and checks everything the endpoint needs.
    pub fn prepare(cfg: &EndpointConfig<'_>) -> Result<Endpoint, EndpointError> {
        let Some(path) = cfg.web_config_file else {
            if !cfg.listen.ip().is_loopback() && !cfg.insecure_listen {
                return Err(EndpointError::Exposed { listen: cfg.listen });
            }
            return Ok(Endpoint {
                tls: None,
                auth: None,
                headers: Vec::new(),
                api: cfg.api,
                health_without_auth: cfg.health_without_auth,
            });
        };
        let web = config::load(path)?;
        let tls = web.tls.as_ref().map(Tls::new).transpose()?;
        let mut headers = Vec::new();
        for (name, value) in &web.headers {
            let bad = |why: String| EndpointError::Header {
                path: path.to_path_buf(),
                name: name.clone(),
                why,
            };
            let n = HeaderName::try_from(name.as_str()).map_err(|e| bad(e.to_string()))?;
            let v = HeaderValue::try_from(value.as_str()).map_err(|e| bad(e.to_string()))?;
            headers.push((n, v));
        }
        Ok(Endpoint {
            tls,
            auth: BasicAuth::new(&web.basic_auth_users).map(Arc::new),
            headers,
            api: cfg.api,
            health_without_auth: cfg.health_without_auth,
        })
    }

    /// An endpoint with no TLS, no auth, the API on (tests, the demo).
    pub fn plain() -> Endpoint {
        Endpoint {
            tls: None,
            auth: None,
            headers: Vec::new(),
            api: true,
            health_without_auth: false,
        }
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}
