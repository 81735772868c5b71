//! The address file `<store>/daemon.json` (`{"addr":…,"pid":…}`): written
//! atomically once the daemon listens, removed on a graceful stop, so that
//! `query`, `show` and `export` find the daemon that holds the store; and
//! the headers by which every answer names its process and store, so a
//! file left by a killed daemon never leads the CLI to another store.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DaemonError;

/// Name of the address file in the store directory.
pub const ADDRESS_FILE: &str = "daemon.json";

/// The content of the address file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonAddress {
    /// Where the HTTP endpoint listens.
    pub addr: SocketAddr,
    /// The daemon's process id.
    pub pid: u32,
    /// A random token for the daemon's admin requests (`store backup`):
    /// the file is owner-only, so only the store's owner (and root) can
    /// ask them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// With TLS: the certificate the daemon serves (DER, base64), which
    /// the CLI trusts, exactly, to reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// With TLS: the certificate (DER, base64) and key (PKCS#8 DER,
    /// base64) the CLI presents when the daemon asks for a client
    /// certificate (see `web::tls::LocalClient`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_cert: Option<String>,
    /// See `tls_client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_key: Option<String>,
}

fn b64(der: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(der)
}

fn unb64(text: Option<&str>) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text?).ok()
}

impl DaemonAddress {
    /// The address file of this process at `addr`, with `token`, and with
    /// TLS the served certificate and the local client identity.
    pub fn new(
        addr: SocketAddr,
        token: &str,
        tls: Option<(&[u8], &crate::web::tls::LocalClient)>,
    ) -> DaemonAddress {
        DaemonAddress {
            addr,
            pid: std::process::id(),
            token: Some(token.to_owned()),
            tls_cert: tls.map(|(leaf, _)| b64(leaf)),
            tls_client_cert: tls.map(|(_, c)| b64(&c.cert_der)),
            tls_client_key: tls.map(|(_, c)| b64(&c.key_der)),
        }
    }

    /// The served certificate (DER), with TLS.
    pub fn tls_cert_der(&self) -> Option<Vec<u8>> {
        unb64(self.tls_cert.as_deref())
    }

    /// The local client identity, with TLS.
    pub fn local_client(&self) -> Option<crate::web::tls::LocalClient> {
        Some(crate::web::tls::LocalClient {
            cert_der: unb64(self.tls_client_cert.as_deref())?,
            key_der: unb64(self.tls_client_key.as_deref())?,
        })
    }
}

/// Reads `<store>/daemon.json`, if a daemon left one.
pub fn read_address(store_dir: &Path) -> Option<DaemonAddress> {
    let text = std::fs::read(store_dir.join(ADDRESS_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Removes an address file left by a daemon that did not stop gracefully
/// (`kill -9`, a crash). Call it only while holding the store: then no
/// daemon of this store is running, and the file can only mislead.
pub fn clear_stale_address(store_dir: &Path) {
    let path = store_dir.join(ADDRESS_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "removed the address file a stopped daemon left behind")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a stale address file")
        }
    }
}

/// Response header naming the store a daemon holds (its `Store::id`).
pub const STORE_ID_HEADER: &str = "x-bbcrawl-store-id";
/// Response header carrying the daemon's process id.
pub const PID_HEADER: &str = "x-bbcrawl-pid";

/// Writes the address file atomically: readers see no file or a whole one.
pub(super) fn write_address(
    store_dir: &Path,
    address: &DaemonAddress,
) -> Result<PathBuf, DaemonError> {
    let path = store_dir.join(ADDRESS_FILE);
    let err = |source: io::Error| DaemonError::AddressFile {
        path: path.clone(),
        source,
    };
    let body = serde_json::to_vec(address).map_err(|e| err(e.into()))?;
    // Owner-only: it tells where the query API listens.
    crate::store::write_atomically(&path, &body, 0o600).map_err(err)?;
    Ok(path)
}
