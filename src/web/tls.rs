//! TLS for the daemon's endpoint, as a web config's `tls_server_config` describes it,
//! on rustls with the ring provider (the one reqwest already uses).
//!
//! [`Tls::new`] reads the certificate chain and key at once (a missing, malformed or
//! mismatched pair is a [`WebConfigError`] naming the file) and builds the
//! [`ServerConfig`]: ALPN `http/1.1` only, the configured TLS versions, cipher suites
//! and key exchange groups (rustls' ring defaults when none are named), and the
//! client certificate policy:
//!
//! | `client_auth_type`           | asks | requires | chain checked against `client_ca_file` |
//! |------------------------------|------|----------|----------------------------------------|
//! | `NoClientCert`               | no   | no       | —                                      |
//! | `RequestClientCert`          | yes  | no       | no (signature checked)                 |
//! | `RequireAnyClientCert`       | yes  | yes      | no (signature checked)                 |
//! | `VerifyClientCertIfGiven`    | yes  | no¹      | yes                                    |
//! | `RequireAndVerifyClientCert` | yes  | yes      | yes                                    |
//!
//! ¹ yes when `client_allowed_sans` is set: then a verified certificate must also
//! carry one of those names (DNS name, e-mail address, IP address or URI, compared
//! as text, as the toolkit does).
//!
//! **Reloading.** The toolkit re-reads the pair on every handshake. Here every
//! handshake first `stat`s the files (about 5 µs for three files in a debug build,
//! against a handshake's milliseconds) and re-reads them only when their size, times
//! or inode changed, or while they were modified less than 2 s ago (a rewrite within
//! the file system's timestamp granularity would otherwise go unseen); a re-read that
//! finds what the last one found changes nothing. A new pair that cannot be used
//! (half written, key and certificate not matching yet, a file missing) is not
//! served: the previous one stays, with one `warn` per change; a new pair that works
//! is logged at `info` and sent to the [`Tls::subscribe`] receivers. The client CA
//! file is watched the same way (a broken one keeps the previous CAs). PEM written in
//! the web config itself never changes. A change is seen at the next handshake or
//! [`Tls::refresh`] call, whichever comes first. The look happens inside rustls'
//! handshake, so on the async thread: `stat` calls, and small reads after a change.
//!
//! [`pinned_client_config`] is the other side: the CLI's client config that trusts
//! exactly the certificate the daemon serves.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoClientAuth, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError,
    InconsistentKeys, OtherError, RootCertStore, ServerConfig, SignatureScheme,
    SupportedCipherSuite, SupportedProtocolVersion,
};
use tokio::sync::watch;

use super::config::{
    is_tls12_suite, ClientAuth, PemSource, TlsSettings, TlsVersion, WebConfigError,
};
use crate::config::{read_small_file, MAX_FILE_BYTES};

/// The endpoint's TLS: the rustls server config and the certificate it serves,
/// re-read when its files change. Cheap to clone (shared).
#[derive(Clone)]
pub struct Tls {
    shared: Arc<Shared>,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate chain and key (and the client CAs) now and builds the
    /// server config. Any file that is missing, unreadable, not PEM of the right kind,
    /// or a key that does not match the certificate is an error naming it.
    pub fn new(settings: &TlsSettings) -> Result<Tls, WebConfigError> {
        let provider = Arc::new(provider_for(settings));
        let pair_stamp = pair_stamp(settings);
        let pair_text = read_pair(settings);
        let pair_digest = digest(&pair_text);
        let (cert_text, key_text) = pair_text?;
        let key = build_pair(settings, &provider, &cert_text, &key_text)?;
        let (ca_stamp, ca_digest, cas) = match &settings.client_ca {
            Some(source) => {
                let stamp = source_stamp(source);
                let text = read_pem(settings, ca_setting(source), source);
                let ca_digest = digest(&text);
                let cas = build_client_cas(settings, source, &provider, &text?)?;
                (stamp, ca_digest, Some(cas))
            }
            None => (Vec::new(), 0, None),
        };
        let leaf = key.cert[0].to_vec();
        let (leaf_tx, _) = watch::channel(leaf);
        let client = ClientCas {
            verifier: RwLock::new(None),
            hints: HintNode::default(),
        };
        if let Some(cas) = cas {
            client.install(cas);
        }
        let shared = Arc::new(Shared {
            settings: settings.clone(),
            provider: provider.clone(),
            state: Mutex::new(State {
                key: Arc::new(key),
                pair_stamp,
                pair_digest,
                pair_broken: false,
                ca_stamp,
                ca_digest,
            }),
            leaf: leaf_tx,
            client,
            local_client: RwLock::new(None),
        });

        let versions = protocol_versions(settings);
        let builder = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| WebConfigError::Invalid {
                path: settings.config_file.clone(),
                message: format!("the TLS settings cannot be used: {e}"),
            })?;
        let verifier: Arc<dyn ClientCertVerifier> = match settings.client_auth {
            ClientAuth::NoClientCert => Arc::new(NoClientAuth),
            _ => Arc::new(ClientVerifier {
                shared: shared.clone(),
            }),
        };
        let mut config = builder
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver {
                shared: shared.clone(),
            }));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            shared,
            config: Arc::new(config),
        })
    }

    /// The rustls server config (for `tokio_rustls::TlsAcceptor::from`).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The settings this was built from.
    pub fn settings(&self) -> &TlsSettings {
        &self.shared.settings
    }

    /// The DER of the end-entity certificate now served.
    pub fn leaf_der(&self) -> Vec<u8> {
        self.shared.leaf.borrow().clone()
    }

    /// The served end-entity certificate's DER, now and after each reload that
    /// changed it.
    pub fn subscribe(&self) -> watch::Receiver<Vec<u8>> {
        self.shared.leaf.subscribe()
    }

    /// Checks the certificate, key and client CA files now (as every handshake
    /// does) and loads what changed; true when a new certificate is served.
    /// Blocking file I/O, small.
    pub fn refresh(&self) -> bool {
        self.shared.refresh().1
    }

    /// Accepts `cert_der` as a client certificate whatever the client auth
    /// type asks (the daemon's own CLI, see [`LocalClient`]); its handshake
    /// signatures are checked as any client's.
    pub fn accept_local_client(&self, cert_der: Vec<u8>) {
        *self
            .shared
            .local_client
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(cert_der);
    }

    /// `serial 01:02:…, valid until 2027-01-01 00:00:00 UTC` for the served
    /// certificate, for a log line.
    pub fn leaf_summary(&self) -> String {
        describe(&self.leaf_der())
    }
}

/// A client config (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`) that accepts
/// exactly one server: the one whose end-entity certificate is `leaf_der`, whatever
/// name or address was dialled, with its handshake signatures checked against that
/// certificate's key. Neither the chain nor the validity dates are looked at: the
/// certificate is trusted because it is that one (as an SSH host key is). For
/// `reqwest::ClientBuilder::use_preconfigured_tls` (rustls 0.23, as reqwest 0.12's).
pub fn pinned_client_config(leaf_der: Vec<u8>) -> ClientConfig {
    pinned_client_config_with(leaf_der, None)
}

/// [`pinned_client_config`] presenting `client` when the server asks for a
/// client certificate.
pub fn pinned_client_config_with(leaf_der: Vec<u8>, client: Option<&LocalClient>) -> ClientConfig {
    let provider = Arc::new(ring::default_provider());
    let verifier = PinnedServer {
        leaf: CertificateDer::from(leaf_der),
        provider: provider.clone(),
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring's default provider speaks TLS 1.2 and 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let with_cert = client.and_then(|c| {
        let key = PrivateKeyDer::try_from(c.key_der.clone()).ok()?;
        let cert = CertificateDer::from(c.cert_der.clone());
        builder.clone().with_client_auth_cert(vec![cert], key).ok()
    });
    let mut config = with_cert.unwrap_or_else(|| builder.with_no_client_auth());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

/// The client identity of the daemon's own CLI: a self-signed certificate
/// and its key, made when the daemon starts and handed to the CLI through
/// the owner-only address file. The daemon accepts it as a client
/// certificate whatever `client_auth_type` says, so `query`, `show` and
/// `export` reach their daemon with mutual TLS on (the local token then
/// stands in for the password); it proves only that the client could read
/// that file.
pub struct LocalClient {
    /// The certificate (DER).
    pub cert_der: Vec<u8>,
    /// Its key (PKCS#8 DER).
    pub key_der: Vec<u8>,
}

impl fmt::Debug for LocalClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalClient { .. }")
    }
}

impl LocalClient {
    /// A new one (P-256, valid for a year).
    pub fn generate() -> Result<LocalClient, String> {
        let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = rcgen::CertificateParams::new(vec!["bbcrawl-local-cli".to_owned()])
            .map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bbcrawl local CLI");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(LocalClient {
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }
}

// ---------------------------------------------------------------------------------
// Shared state: the served pair, the client CAs, what the files looked like.

struct Shared {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    state: Mutex<State>,
    /// The served end-entity certificate (DER); its value is what `leaf_der` reads.
    leaf: watch::Sender<Vec<u8>>,
    client: ClientCas,
    /// The daemon's own CLI's client certificate (see [`LocalClient`]).
    local_client: RwLock<Option<Vec<u8>>>,
}

struct State {
    key: Arc<CertifiedKey>,
    /// The certificate and key files as last seen (empty for inline PEM).
    pair_stamp: Vec<FileStamp>,
    /// What was last read from them (a hash of the text, or of why it failed).
    pair_digest: u64,
    /// The files changed into something unusable (and that was logged).
    pair_broken: bool,
    /// The client CA file as last seen, and what was last read from it.
    ca_stamp: Vec<FileStamp>,
    ca_digest: u64,
}

impl Shared {
    /// Reloads what changed on disk; returns the pair to serve and whether it is new.
    ///
    /// A file is re-read when its metadata changed, or while it was modified less than
    /// [`SETTLING`] ago (a rewrite within the file system's timestamp granularity can
    /// leave the metadata as it was); what was read is compared with what was read
    /// last, so an unchanged or still broken file is neither loaded nor logged twice.
    fn refresh(&self) -> (Arc<CertifiedKey>, bool) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut changed = false;
        let stamp = pair_stamp(&self.settings);
        if stamp != state.pair_stamp || settling(&stamp) {
            state.pair_stamp = stamp;
            let text = read_pair(&self.settings);
            let digest = digest(&text);
            if digest != state.pair_digest {
                state.pair_digest = digest;
                let pair = text.and_then(|(cert, key)| {
                    build_pair(&self.settings, &self.provider, &cert, &key)
                });
                match pair {
                    Ok(key) if key.cert != state.key.cert => {
                        let leaf = key.cert[0].to_vec();
                        tracing::info!(
                            web_config = %self.settings.config_file.display(),
                            certificate = %describe(&leaf),
                            "serving the new TLS certificate from {}",
                            origin(&self.settings.cert),
                        );
                        state.key = Arc::new(key);
                        state.pair_broken = false;
                        self.leaf.send_replace(leaf);
                        changed = true;
                    }
                    Ok(_) => {
                        if std::mem::take(&mut state.pair_broken) {
                            tracing::info!(
                                web_config = %self.settings.config_file.display(),
                                "the TLS certificate and key files are usable again (unchanged)",
                            );
                        }
                    }
                    Err(e) => {
                        state.pair_broken = true;
                        tracing::warn!(
                            error = %e,
                            serving = %describe(&state.key.cert[0]),
                            "the TLS certificate or key changed but cannot be used; still serving the previous certificate",
                        );
                    }
                }
            }
        }
        if let Some(source) = &self.settings.client_ca {
            let stamp = source_stamp(source);
            if stamp != state.ca_stamp || settling(&stamp) {
                state.ca_stamp = stamp;
                let text = read_pem(&self.settings, ca_setting(source), source);
                let digest = digest(&text);
                if digest != state.ca_digest {
                    state.ca_digest = digest;
                    let cas = text.and_then(|text| {
                        build_client_cas(&self.settings, source, &self.provider, &text)
                    });
                    match cas {
                        Ok(cas) => {
                            tracing::info!(
                                web_config = %self.settings.config_file.display(),
                                certificates = cas.subjects.len(),
                                "checking client certificates against the new CAs from {}",
                                origin(source),
                            );
                            self.client.install(cas);
                        }
                        Err(e) => tracing::warn!(
                            error = %e,
                            "the client CA file changed but cannot be used; still checking client certificates against the previous CAs",
                        ),
                    }
                }
            }
        }
        (state.key.clone(), changed)
    }
}

/// The server certificate: whatever the files hold now (see the module doc).
struct Resolver {
    shared: Arc<Shared>,
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.shared.refresh().0)
    }
}

// ---------------------------------------------------------------------------------
// Files: what they look like, what they hold.

/// A file's identity and version as `stat` tells (or why it could not).
#[derive(Clone, Debug, PartialEq, Eq)]
enum FileStamp {
    Seen {
        len: u64,
        modified: Option<SystemTime>,
        /// Inode, device, change time (seconds, nanoseconds); zero off Unix.
        inode: (u64, u64, i64, i64),
    },
    Unreadable(std::io::ErrorKind),
}

fn file_stamp(path: &Path) -> FileStamp {
    match std::fs::metadata(path) {
        Ok(meta) => {
            #[cfg(unix)]
            let inode = {
                use std::os::unix::fs::MetadataExt;
                (meta.ino(), meta.dev(), meta.ctime(), meta.ctime_nsec())
            };
            #[cfg(not(unix))]
            let inode = (0, 0, 0, 0);
            FileStamp::Seen {
                len: meta.len(),
                modified: meta.modified().ok(),
                inode,
            }
        }
        Err(e) => FileStamp::Unreadable(e.kind()),
    }
}

/// How long after a change a file is re-read on every look (see [`Shared::refresh`]).
const SETTLING: Duration = Duration::from_secs(2);

/// Whether a file was modified less than [`SETTLING`] ago (or in the future).
fn settling(stamp: &[FileStamp]) -> bool {
    let now = SystemTime::now();
    stamp.iter().any(|file| match file {
        FileStamp::Seen {
            modified: Some(modified),
            ..
        } => now
            .duration_since(*modified)
            .map_or(true, |age| age < SETTLING),
        _ => false,
    })
}

/// A hash of what was read (the text, or the error), to tell a change from a re-read.
fn digest<T: Hash>(read: &Result<T, WebConfigError>) -> u64 {
    let mut hasher = DefaultHasher::new();
    match read {
        Ok(text) => text.hash(&mut hasher),
        Err(e) => e.to_string().hash(&mut hasher),
    }
    hasher.finish()
}

fn source_stamp(source: &PemSource) -> Vec<FileStamp> {
    source.file().map(file_stamp).into_iter().collect()
}

fn pair_stamp(settings: &TlsSettings) -> Vec<FileStamp> {
    let mut stamp = source_stamp(&settings.cert);
    stamp.extend(source_stamp(&settings.key));
    stamp
}

/// `file /etc/x.crt` or `the web config`, for log lines.
fn origin(source: &PemSource) -> String {
    match source {
        PemSource::File(path) => format!("file {}", path.display()),
        PemSource::Inline(_) => "the web config".to_owned(),
    }
}

/// The setting's name for `source`: `file_name` or `inline_name`.
fn setting(source: &PemSource, file_name: &'static str, inline_name: &'static str) -> &'static str {
    match source {
        PemSource::File(_) => file_name,
        PemSource::Inline(_) => inline_name,
    }
}

fn pem_error(
    settings: &TlsSettings,
    what: &'static str,
    source: &PemSource,
    message: String,
) -> WebConfigError {
    WebConfigError::Pem {
        path: settings.config_file.clone(),
        what,
        file: source.file().map(Path::to_owned),
        message,
    }
}

/// The PEM text of `source`.
fn read_pem(
    settings: &TlsSettings,
    what: &'static str,
    source: &PemSource,
) -> Result<String, WebConfigError> {
    match source {
        PemSource::File(path) => read_small_file(path, MAX_FILE_BYTES)
            .map_err(|e| pem_error(settings, what, source, format!("cannot read it: {e}"))),
        PemSource::Inline(text) => Ok(text.clone()),
    }
}

/// Why PEM text could not be read, in words that quote none of it.
fn pem_problem(e: &pem::Error, wanted: &str) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => {
            "a PEM section has no END line (is the file complete?)".to_owned()
        }
        pem::Error::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a PEM section is not valid base64".to_owned(),
        pem::Error::NoItemsFound => format!("no {wanted} in it"),
        _ => "it is not valid PEM".to_owned(),
    }
}

/// Every `CERTIFICATE` section of `text`, in order; at least one.
fn parse_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_problem(&e, "certificate"))?;
    if certs.is_empty() {
        let hint = if text.contains("PRIVATE KEY-----") {
            ": it holds a private key (are the certificate and key swapped?)"
        } else {
            " (no -----BEGIN CERTIFICATE----- section)"
        };
        return Err(format!("no certificate in it{hint}"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) of `text`.
fn parse_private_key(text: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| match e {
        pem::Error::NoItemsFound if text.contains("ENCRYPTED PRIVATE KEY-----") => {
            "the private key is encrypted: give an unencrypted key (readable by this user only)"
                .to_owned()
        }
        pem::Error::NoItemsFound if text.contains("BEGIN CERTIFICATE-----") => {
            "no private key in it: it holds a certificate (are the certificate and key swapped?)"
                .to_owned()
        }
        e => pem_problem(&e, "private key (no -----BEGIN PRIVATE KEY----- section)"),
    })
}

/// The PEM text of the certificate chain and of the key.
fn read_pair(settings: &TlsSettings) -> Result<(String, String), WebConfigError> {
    let cert = read_pem(
        settings,
        setting(&settings.cert, "cert_file", "cert"),
        &settings.cert,
    )?;
    let key = read_pem(
        settings,
        setting(&settings.key, "key_file", "key"),
        &settings.key,
    )?;
    Ok((cert, key))
}

/// The certificate chain and key from their PEM text, checked to belong together
/// and to be usable with the configured cipher suites.
fn build_pair(
    settings: &TlsSettings,
    provider: &CryptoProvider,
    cert_text: &str,
    key_text: &str,
) -> Result<CertifiedKey, WebConfigError> {
    let cert_what = setting(&settings.cert, "cert_file", "cert");
    let key_what = setting(&settings.key, "key_file", "key");
    let cert_error = |message| pem_error(settings, cert_what, &settings.cert, message);
    let key_error = |message| pem_error(settings, key_what, &settings.key, message);

    let chain = parse_certificates(cert_text).map_err(cert_error)?;
    ParsedCertificate::try_from(&chain[0])
        .map_err(|e| cert_error(format!("its first certificate cannot be used: {e}")))?;
    let key_der = parse_private_key(key_text).map_err(key_error)?;
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| key_error(format!("the private key cannot be used: {e}")))?;
    let algorithm = signing_key.algorithm();
    let pair = CertifiedKey::new(chain, signing_key);
    match pair.keys_match() {
        // ring's keys all know their public key; `Unknown` would only mean "cannot tell".
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(key_error(format!(
                "the private key does not belong to the certificate in {}{} (their public keys differ)",
                cert_what,
                settings
                    .cert
                    .file()
                    .map(|f| format!(" {}", f.display()))
                    .unwrap_or_default()
            )))
        }
        Err(e) => return Err(cert_error(format!("cannot be checked against the key: {e}"))),
    }
    if !settings.allows(TlsVersion::Tls13)
        && !provider.cipher_suites.iter().any(|suite| {
            matches!(suite, SupportedCipherSuite::Tls12(_))
                && suite.usable_for_signature_algorithm(algorithm)
        })
    {
        return Err(key_error(format!(
            "the key is {algorithm:?}, which none of cipher_suites can use (TLS 1.3 is off by max_version)"
        )));
    }
    Ok(pair)
}

/// The client CAs: for the verifying types, the verifier; for all, the names
/// hinted to clients.
struct LoadedCas {
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    subjects: Vec<DistinguishedName>,
}

fn ca_setting(source: &PemSource) -> &'static str {
    setting(source, "client_ca_file", "client_ca")
}

fn build_client_cas(
    settings: &TlsSettings,
    source: &PemSource,
    provider: &Arc<CryptoProvider>,
    text: &str,
) -> Result<LoadedCas, WebConfigError> {
    let error = |message| pem_error(settings, ca_setting(source), source, message);
    let certs = parse_certificates(text).map_err(error)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| error(format!("certificate {} in it cannot be a CA: {e}", i + 1)))?;
    }
    let subjects = roots.subjects();
    let verifier = if settings.client_auth.verifies() {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if settings.client_auth == ClientAuth::VerifyClientCertIfGiven {
            builder = builder.allow_unauthenticated();
        }
        Some(
            builder
                .build()
                .map_err(|e| error(format!("cannot check client certificates with it: {e}")))?,
        )
    } else {
        None
    };
    Ok(LoadedCas { verifier, subjects })
}

// ---------------------------------------------------------------------------------
// Client certificates.

/// The client CAs now in force.
struct ClientCas {
    verifier: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
    /// Every set of CA names hinted so far, the last one current (see [`HintNode`]).
    hints: HintNode,
}

impl ClientCas {
    fn install(&self, cas: LoadedCas) {
        *self
            .verifier
            .write()
            .unwrap_or_else(PoisonError::into_inner) = cas.verifier;
        self.hints.push(cas.subjects);
    }
}

/// An append-only list of CA name sets: rustls borrows the hinted names for as long
/// as it borrows the verifier, so a set is never dropped once handed out (a few
/// hundred bytes per CA file change).
#[derive(Default)]
struct HintNode {
    names: Vec<DistinguishedName>,
    next: OnceLock<Box<HintNode>>,
}

impl HintNode {
    fn latest(&self) -> &[DistinguishedName] {
        let mut node = self;
        while let Some(next) = node.next.get() {
            node = next;
        }
        &node.names
    }

    fn push(&self, names: Vec<DistinguishedName>) {
        let mut node = self;
        let mut names = Some(names);
        loop {
            if let Some(next) = node.next.get() {
                node = next;
                continue;
            }
            let new = Box::new(HintNode {
                names: names.take().unwrap_or_default(),
                next: OnceLock::new(),
            });
            match node.next.set(new) {
                Ok(()) => return,
                Err(new) => names = Some(new.names),
            }
        }
    }
}

/// Every client auth type but `NoClientCert` (see the module doc's table).
struct ClientVerifier {
    shared: Arc<Shared>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("client_auth", &self.shared.settings.client_auth)
            .finish()
    }
}

/// A certificate refused, and why in words.
struct Refused(&'static str);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// The words too: rustls shows this error with `{:?}`.
impl fmt::Debug for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Refused {}

/// A verified client certificate without any of `client_allowed_sans`.
const NO_ALLOWED_SAN: Refused = Refused(
    "the client certificate has none of the subject alternative names in client_allowed_sans",
);

/// The server presented another certificate than the pinned one.
const NOT_PINNED: Refused = Refused(
    "the server's certificate is not the one this client trusts (the daemon's certificate changed, or another server answers at this address)",
);

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        let settings = &self.shared.settings;
        match settings.client_auth {
            ClientAuth::RequireAnyClientCert | ClientAuth::RequireAndVerifyClientCert => true,
            ClientAuth::VerifyClientCertIfGiven => !settings.client_allowed_sans.is_empty(),
            ClientAuth::NoClientCert | ClientAuth::RequestClientCert => false,
        }
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.shared.client.hints.latest()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        let settings = &self.shared.settings;
        let local = self
            .shared
            .local_client
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .as_deref()
            == Some(end_entity.as_ref());
        if local {
            return Ok(ClientCertVerified::assertion());
        }
        if !settings.client_auth.verifies() {
            // Go parses the certificate it does not verify; so does this.
            ParsedCertificate::try_from(end_entity)?;
            return Ok(ClientCertVerified::assertion());
        }
        let verifier = self
            .shared
            .client
            .verifier
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| TlsError::General("no client CA is loaded".to_owned()))?;
        verifier.verify_client_cert(end_entity, intermediates, now)?;
        if !settings.client_allowed_sans.is_empty() {
            let names = der::subject_alt_names(end_entity).unwrap_or_default();
            if !names
                .iter()
                .any(|name| settings.client_allowed_sans.contains(name))
            {
                return Err(TlsError::InvalidCertificate(CertificateError::Other(
                    OtherError(Arc::new(NO_ALLOWED_SAN)),
                )));
            }
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.shared.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.shared
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---------------------------------------------------------------------------------
// The provider and versions the settings ask for.

fn provider_for(settings: &TlsSettings) -> CryptoProvider {
    let mut provider = ring::default_provider();
    if !settings.cipher_suites.is_empty() {
        // TLS 1.3 suites are not configurable (as in Go): all of them, then the TLS 1.2
        // suites named, in the order named.
        let tls13 = provider
            .cipher_suites
            .iter()
            .filter(|suite| matches!(suite, SupportedCipherSuite::Tls13(_)));
        let tls12 = settings
            .cipher_suites
            .iter()
            .filter(|suite| is_tls12_suite(**suite))
            .filter_map(|wanted| provider.cipher_suites.iter().find(|s| s.suite() == *wanted));
        provider.cipher_suites = tls13.chain(tls12).copied().collect();
    }
    if !settings.curves.is_empty() {
        provider.kx_groups = settings
            .curves
            .iter()
            .filter_map(|wanted| provider.kx_groups.iter().find(|g| g.name() == *wanted))
            .copied()
            .collect();
    }
    provider
}

fn protocol_versions(settings: &TlsSettings) -> Vec<&'static SupportedProtocolVersion> {
    let mut versions = Vec::new();
    if settings.allows(TlsVersion::Tls13) {
        versions.push(&rustls::version::TLS13);
    }
    if settings.allows(TlsVersion::Tls12) {
        versions.push(&rustls::version::TLS12);
    }
    versions
}

// ---------------------------------------------------------------------------------
// The CLI's side.

/// Accepts exactly the server certificate `leaf` (see [`pinned_client_config`]).
struct PinnedServer {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinnedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServer")
            .field("leaf", &describe(&self.leaf))
            .finish()
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(TlsError::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NOT_PINNED)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

// ---------------------------------------------------------------------------------
// What a certificate says, for the SAN check and log lines.

/// `serial 01:02:…, valid until 2027-01-01 00:00:00 UTC`.
fn describe(der: &[u8]) -> String {
    match der::summary(der) {
        Some((serial, not_after)) => format!("serial {serial}, valid until {not_after}"),
        None => "a certificate that cannot be read".to_owned(),
    }
}

/// Just enough DER to read an X.509 certificate's serial number, expiry and subject
/// alternative names (the certificate has been parsed by webpki before any of this
/// matters; malformed input gives `None`, never a panic).
mod der {
    use super::{IpAddr, Ipv6Addr};

    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    const VERSION: u8 = 0xa0;
    const EXTENSIONS: u8 = 0xa3;
    const UTC_TIME: u8 = 0x17;
    const GENERALIZED_TIME: u8 = 0x18;
    /// 2.5.29.17, subjectAltName.
    const SAN_OID: &[u8] = &[0x55, 0x1d, 0x11];

    /// One element of `input`: tag, contents, what follows.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // multi-byte tags: not in the fields read here
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    /// The elements inside `contents`, in order (stops at the first malformed one).
    fn elements(mut contents: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
        std::iter::from_fn(move || {
            let (tag, value, rest) = element(contents)?;
            contents = rest;
            Some((tag, value))
        })
    }

    fn expect(item: Option<(u8, &[u8])>, tag: u8) -> Option<&[u8]> {
        item.filter(|(t, _)| *t == tag).map(|(_, value)| value)
    }

    struct Fields<'a> {
        serial: &'a [u8],
        not_after: (u8, &'a [u8]),
        san: Option<&'a [u8]>,
    }

    fn fields(der: &[u8]) -> Option<Fields<'_>> {
        let (tag, certificate, _) = element(der)?;
        if tag != SEQUENCE {
            return None;
        }
        let (tag, tbs, _) = element(certificate)?;
        if tag != SEQUENCE {
            return None;
        }
        let mut items = elements(tbs).peekable();
        if items.peek().is_some_and(|(tag, _)| *tag == VERSION) {
            items.next();
        }
        let serial = expect(items.next(), INTEGER)?;
        expect(items.next(), SEQUENCE)?; // signature algorithm
        expect(items.next(), SEQUENCE)?; // issuer
        let mut validity = elements(expect(items.next(), SEQUENCE)?);
        validity.next()?;
        let not_after = validity.next()?;
        expect(items.next(), SEQUENCE)?; // subject
        expect(items.next(), SEQUENCE)?; // subject public key info
        let mut san = None;
        for (tag, value) in items {
            if tag != EXTENSIONS {
                continue;
            }
            let (tag, extensions, _) = element(value)?;
            if tag != SEQUENCE {
                return None;
            }
            for (tag, extension) in elements(extensions) {
                if tag != SEQUENCE {
                    continue;
                }
                let mut parts = elements(extension).peekable();
                let oid = expect(parts.next(), OID)?;
                if parts.peek().is_some_and(|(tag, _)| *tag == BOOLEAN) {
                    parts.next();
                }
                let value = expect(parts.next(), OCTET_STRING)?;
                if oid == SAN_OID {
                    san = Some(value);
                }
            }
        }
        Some(Fields {
            serial,
            not_after,
            san,
        })
    }

    /// The subject alternative names the toolkit compares: DNS names, e-mail
    /// addresses, IP addresses (as Go prints them) and URIs. Empty without the
    /// extension; `None` when the certificate cannot be read.
    pub(super) fn subject_alt_names(der: &[u8]) -> Option<Vec<String>> {
        let Some(san) = fields(der)?.san else {
            return Some(Vec::new());
        };
        let (tag, names, _) = element(san)?;
        if tag != SEQUENCE {
            return None;
        }
        Some(
            elements(names)
                .filter_map(|(tag, value)| match tag {
                    // [1] rfc822Name, [2] dNSName, [6] uniformResourceIdentifier
                    0x81 | 0x82 | 0x86 => std::str::from_utf8(value).ok().map(str::to_owned),
                    // [7] iPAddress
                    0x87 => ip_address(value).map(|ip| ip.to_string()),
                    _ => None,
                })
                .collect(),
        )
    }

    /// Go prints an IPv4-mapped IPv6 address as IPv4; so does this.
    fn ip_address(bytes: &[u8]) -> Option<IpAddr> {
        if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
            return Some(IpAddr::from(v4));
        }
        let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?);
        Some(match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        })
    }

    /// The serial number (hex, colon-separated) and the end of validity (UTC).
    pub(super) fn summary(der: &[u8]) -> Option<(String, String)> {
        let fields = fields(der)?;
        let serial = match fields.serial {
            [0, rest @ ..] if !rest.is_empty() => rest,
            serial => serial,
        };
        let serial = serial
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        Some((serial, time(fields.not_after)?))
    }

    /// `YYMMDDHHMMSSZ` (UTCTime) or `YYYYMMDDHHMMSSZ` (GeneralizedTime) as
    /// `YYYY-MM-DD HH:MM:SS UTC`.
    fn time((tag, value): (u8, &[u8])) -> Option<String> {
        let text = std::str::from_utf8(value).ok()?;
        let digits = text.strip_suffix('Z')?;
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let full = match (tag, digits.len()) {
            (UTC_TIME, 12) => {
                let century = if digits[..2] < *"50" { "20" } else { "19" };
                format!("{century}{digits}")
            }
            (GENERALIZED_TIME, 14) => digits.to_owned(),
            _ => return None,
        };
        Some(format!(
            "{}-{}-{} {}:{}:{} UTC",
            &full[..4],
            &full[4..6],
            &full[6..8],
            &full[8..10],
            &full[10..12],
            &full[12..14]
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use rustls::{CipherSuite, ProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::web::config::parse;

    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
        der: CertificateDer<'static>,
    }

    fn ca(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    struct Leaf {
        cert_pem: String,
        key_pem: String,
        der: Vec<u8>,
    }

    fn leaf(ca: &TestCa, sans: Vec<SanType>, serial: u64, client: bool) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serial_number = Some(serial.into());
        params.distinguished_name.push(DnType::CommonName, "leaf");
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params.signed_by(&key, &ca.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    fn dns(name: &str) -> SanType {
        SanType::DnsName(name.try_into().unwrap())
    }

    fn server_leaf(ca: &TestCa, serial: u64) -> Leaf {
        leaf(
            ca,
            vec![
                dns("localhost"),
                SanType::IpAddress(Ipv4Addr::LOCALHOST.into()),
            ],
            serial,
            false,
        )
    }

    /// Replaces `dir/name` at once (write aside, rename), as certificate tools do.
    fn put(dir: &Path, name: &str, text: &str) {
        let aside = dir.join(format!(".{name}.new"));
        std::fs::write(&aside, text).unwrap();
        std::fs::rename(&aside, dir.join(name)).unwrap();
    }

    /// A temp dir with a CA, a server pair in server.crt/server.key and the CA in ca.crt.
    struct Fixture {
        dir: tempfile::TempDir,
        ca: TestCa,
        server: Leaf,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let ca = ca("test CA");
            let server = server_leaf(&ca, 1);
            put(dir.path(), "server.crt", &server.cert_pem);
            put(dir.path(), "server.key", &server.key_pem);
            put(dir.path(), "ca.crt", &ca.pem);
            Fixture { dir, ca, server }
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        /// Settings for server.crt/server.key plus `extra` lines of tls_server_config.
        fn settings(&self, extra: &str) -> TlsSettings {
            let text = format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra}"
            );
            parse(&text, &self.path("web.yml")).unwrap().tls.unwrap()
        }

        fn tls(&self, extra: &str) -> Tls {
            Tls::new(&self.settings(extra)).unwrap()
        }
    }

    fn client_config(
        ca: &TestCa,
        client: Option<&Leaf>,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(ca.der.clone()).unwrap();
        let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(leaf) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from(leaf.der.clone())],
                    PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }

    fn client(ca: &TestCa, client: Option<&Leaf>) -> Arc<ClientConfig> {
        client_config(
            ca,
            client,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
    }

    /// What the client saw of a completed exchange.
    #[derive(Debug)]
    struct Seen {
        version: ProtocolVersion,
        suite: CipherSuite,
        leaf: Vec<u8>,
        alpn: Option<Vec<u8>>,
    }

    /// One connection: the server accepts, says `ok` and closes; the client reads it.
    /// Returns the server's and the client's outcome.
    async fn exchange(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: &str,
    ) -> (Result<(), String>, Result<Seen, String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_side = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())
        });
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let client_side = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut tls = TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut body = Vec::new();
            tls.read_to_end(&mut body)
                .await
                .map_err(|e| e.to_string())?;
            if body != b"ok" {
                return Err(format!("read {body:?}"));
            }
            let connection = tls.get_ref().1;
            Ok(Seen {
                version: connection.protocol_version().unwrap(),
                suite: connection.negotiated_cipher_suite().unwrap().suite(),
                leaf: connection.peer_certificates().unwrap()[0].to_vec(),
                alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            })
        };
        let limit = Duration::from_secs(10);
        let client_result = tokio::time::timeout(limit, client_side)
            .await
            .unwrap_or_else(|_| Err("the client timed out".to_owned()));
        let server_result = match tokio::time::timeout(limit, server_side).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the server timed out".to_owned()),
        };
        (server_result, client_result)
    }

    /// The exchange succeeded on both sides; what the client saw.
    async fn ok(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Seen {
        let (server_result, client_result) = exchange(server, client, "localhost").await;
        server_result.expect("the server side should succeed");
        client_result.expect("the client side should succeed")
    }

    /// The exchange failed; the server's error.
    async fn refused(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> String {
        let (server_result, client_result) = exchange(server, client, "localhost").await;
        assert!(
            client_result.is_err(),
            "the client should fail too: {client_result:?}"
        );
        server_result.expect_err("the server should refuse the handshake")
    }

    #[tokio::test]
    async fn tls13_by_default_http11_only() {
        let f = Fixture::new();
        let tls = f.tls("");
        let seen = ok(tls.server_config(), client(&f.ca, None)).await;
        assert_eq!(seen.version, ProtocolVersion::TLSv1_3);
        assert_eq!(seen.leaf, f.server.der);
        assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(tls.leaf_der(), f.server.der);
        assert!(
            tls.leaf_summary().starts_with("serial 01, valid until "),
            "{}",
            tls.leaf_summary()
        );
    }

    #[tokio::test]
    async fn tls12_when_asked_with_the_named_suite() {
        let f = Fixture::new();
        let tls = f.tls(
            "  min_version: TLS12\n  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n  curve_preferences: [CurveP384]\n",
        );
        let seen = ok(tls.server_config(), client(&f.ca, None)).await;
        assert_eq!(seen.version, ProtocolVersion::TLSv1_2);
        assert_eq!(
            seen.suite,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        );
        // A TLS 1.3-only client cannot connect.
        let only13 = client_config(&f.ca, None, &[&rustls::version::TLS13]);
        refused(tls.server_config(), only13).await;
        // TLS 1.3 only: a TLS 1.2 client cannot connect.
        let tls13 = f.tls("  min_version: TLS13\n");
        let only12 = client_config(&f.ca, None, &[&rustls::version::TLS12]);
        refused(tls13.server_config(), only12).await;
    }

    #[tokio::test]
    async fn a_key_that_no_named_suite_can_use_is_refused() {
        // The test key is ECDSA; with TLS 1.3 off, RSA-only suites cannot serve it.
        let f = Fixture::new();
        let e = Tls::new(&f.settings(
            "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("which none of cipher_suites can use"), "{e}");
    }

    #[tokio::test]
    async fn require_and_verify_client_cert() {
        let f = Fixture::new();
        let tls =
            f.tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
        let e = refused(tls.server_config(), client(&f.ca, None)).await;
        assert!(e.contains("certificate"), "{e}");
        let good = leaf(&f.ca, vec![dns("scraper")], 7, true);
        ok(tls.server_config(), client(&f.ca, Some(&good))).await;
        let stranger = leaf(&ca("another CA"), vec![dns("scraper")], 7, true);
        refused(tls.server_config(), client(&f.ca, Some(&stranger))).await;
        // Over TLS 1.2 as well.
        let tls12 = client_config(&f.ca, Some(&good), &[&rustls::version::TLS12]);
        assert_eq!(
            ok(tls.server_config(), tls12).await.version,
            ProtocolVersion::TLSv1_2
        );
    }

    #[tokio::test]
    async fn verify_client_cert_if_given() {
        let f = Fixture::new();
        let tls = f.tls("  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n");
        ok(tls.server_config(), client(&f.ca, None)).await;
        let good = leaf(&f.ca, vec![dns("scraper")], 7, true);
        ok(tls.server_config(), client(&f.ca, Some(&good))).await;
        let stranger = leaf(&ca("another CA"), vec![dns("scraper")], 7, true);
        refused(tls.server_config(), client(&f.ca, Some(&stranger))).await;
    }

    #[tokio::test]
    async fn request_and_require_any_client_cert_do_not_verify() {
        let f = Fixture::new();
        let stranger = leaf(&ca("another CA"), vec![dns("scraper")], 7, true);
        let require = f.tls("  client_auth_type: RequireAnyClientCert\n");
        refused(require.server_config(), client(&f.ca, None)).await;
        ok(require.server_config(), client(&f.ca, Some(&stranger))).await;
        let request = f.tls("  client_auth_type: RequestClientCert\n");
        ok(request.server_config(), client(&f.ca, None)).await;
        ok(request.server_config(), client(&f.ca, Some(&stranger))).await;
    }

    #[tokio::test]
    async fn allowed_sans_are_enforced() {
        let f = Fixture::new();
        let good = leaf(&f.ca, vec![dns("scraper.example.net")], 7, true);
        let tls = f.tls(
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  client_allowed_sans: [other, scraper.example.net]\n",
        );
        ok(tls.server_config(), client(&f.ca, Some(&good))).await;
        let other = leaf(&f.ca, vec![dns("intruder.example.net")], 8, true);
        refused(tls.server_config(), client(&f.ca, Some(&other))).await;
        // With VerifyClientCertIfGiven, allowed SANs make a certificate mandatory.
        let if_given = f.tls(
            "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n  client_allowed_sans: [scraper.example.net]\n",
        );
        refused(if_given.server_config(), client(&f.ca, None)).await;
        ok(if_given.server_config(), client(&f.ca, Some(&good))).await;
    }

    #[test]
    fn subject_alt_names_as_the_toolkit_compares_them() {
        let ca = ca("test CA");
        let cert = leaf(
            &ca,
            vec![
                dns("a.example.net"),
                SanType::Rfc822Name("ops@example.net".try_into().unwrap()),
                SanType::URI("spiffe://example.net/scraper".try_into().unwrap()),
                SanType::IpAddress("10.1.2.3".parse().unwrap()),
                SanType::IpAddress("2001:db8::1".parse().unwrap()),
                SanType::IpAddress("::ffff:192.0.2.7".parse().unwrap()),
            ],
            0x1234,
            true,
        );
        assert_eq!(
            der::subject_alt_names(&cert.der).unwrap(),
            [
                "a.example.net",
                "ops@example.net",
                "spiffe://example.net/scraper",
                "10.1.2.3",
                "2001:db8::1",
                "192.0.2.7"
            ]
        );
        assert_eq!(
            der::subject_alt_names(&ca.der).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(der::subject_alt_names(b"\x30\x03\x02\x01"), None);
        let (serial, not_after) = der::summary(&cert.der).unwrap();
        assert_eq!(serial, "12:34");
        assert_eq!(not_after, "4096-01-01 00:00:00 UTC");
    }

    #[tokio::test]
    async fn a_replaced_pair_is_served_at_the_next_handshake() {
        let f = Fixture::new();
        let tls = f.tls("");
        let mut leaves = tls.subscribe();
        assert_eq!(
            ok(tls.server_config(), client(&f.ca, None)).await.leaf,
            f.server.der
        );
        assert!(!leaves.has_changed().unwrap());

        let renewed = server_leaf(&f.ca, 2);
        assert_ne!(renewed.der, f.server.der);
        put(f.dir.path(), "server.crt", &renewed.cert_pem);
        put(f.dir.path(), "server.key", &renewed.key_pem);
        assert_eq!(
            ok(tls.server_config(), client(&f.ca, None)).await.leaf,
            renewed.der
        );
        assert!(leaves.has_changed().unwrap());
        assert_eq!(*leaves.borrow_and_update(), renewed.der);
        assert_eq!(tls.leaf_der(), renewed.der);
        assert!(tls.leaf_summary().starts_with("serial 02,"));
        // Nothing changed since: no news.
        assert!(!tls.refresh());
        assert!(!leaves.has_changed().unwrap());
    }

    /// Log lines written while `f` runs on this thread.
    fn logs<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let value = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        (value, text)
    }

    #[tokio::test]
    async fn a_broken_replacement_keeps_the_previous_pair() {
        let f = Fixture::new();
        let tls = f.tls("");
        let renewed = server_leaf(&f.ca, 2);

        // The new certificate lands before its key: they do not match.
        put(f.dir.path(), "server.crt", &renewed.cert_pem);
        let (changed, log) = logs(|| (tls.refresh(), tls.refresh(), tls.refresh()));
        assert_eq!(changed, (false, false, false));
        assert_eq!(
            log.matches("WARN").count(),
            1,
            "one warning per change:\n{log}"
        );
        assert!(
            log.contains("still serving the previous certificate"),
            "{log}"
        );
        assert!(log.contains("does not belong to the certificate"), "{log}");
        assert!(
            !log.contains("PRIVATE KEY") && !log.contains("CERTIFICATE-----"),
            "{log}"
        );
        assert_eq!(
            ok(tls.server_config(), client(&f.ca, None)).await.leaf,
            f.server.der
        );

        // A half-written key: still the previous pair.
        put(
            f.dir.path(),
            "server.key",
            &renewed.key_pem[..renewed.key_pem.len() / 2],
        );
        let (changed, log) = logs(|| tls.refresh());
        assert!(!changed);
        assert!(log.contains("WARN") && log.contains("key_file"), "{log}");
        assert_eq!(
            ok(tls.server_config(), client(&f.ca, None)).await.leaf,
            f.server.der
        );

        // The whole key: the new pair.
        put(f.dir.path(), "server.key", &renewed.key_pem);
        let (changed, log) = logs(|| tls.refresh());
        assert!(changed);
        assert!(
            log.contains("INFO") && log.contains("serving the new TLS certificate"),
            "{log}"
        );
        assert_eq!(
            ok(tls.server_config(), client(&f.ca, None)).await.leaf,
            renewed.der
        );

        // Files removed: the pair in memory stays.
        std::fs::remove_file(f.path("server.crt")).unwrap();
        assert!(!tls.refresh());
        assert_eq!(
            ok(tls.server_config(), client(&f.ca, None)).await.leaf,
            renewed.der
        );
    }

    #[tokio::test]
    async fn a_replaced_client_ca_is_used() {
        let f = Fixture::new();
        let tls =
            f.tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
        let new_ca = ca("new client CA");
        let from_new = leaf(&new_ca, vec![dns("scraper")], 9, true);
        refused(tls.server_config(), client(&f.ca, Some(&from_new))).await;
        // A broken CA file keeps the previous CAs.
        put(f.dir.path(), "ca.crt", "not PEM\n");
        let (_, log) = logs(|| tls.refresh());
        assert!(
            log.contains("still checking client certificates against the previous CAs"),
            "{log}"
        );
        let from_old = leaf(&f.ca, vec![dns("scraper")], 10, true);
        ok(tls.server_config(), client(&f.ca, Some(&from_old))).await;
        put(f.dir.path(), "ca.crt", &new_ca.pem);
        ok(tls.server_config(), client(&f.ca, Some(&from_new))).await;
        refused(tls.server_config(), client(&f.ca, Some(&from_old))).await;
    }

    #[test]
    fn bad_files_at_start_are_errors_naming_them() {
        let f = Fixture::new();
        let settings = f.settings("");
        let error = |settings: &TlsSettings| Tls::new(settings).unwrap_err().to_string();
        let crt = f.path("server.crt").display().to_string();
        let key = f.path("server.key").display().to_string();

        std::fs::remove_file(f.path("server.crt")).unwrap();
        let e = error(&settings);
        assert!(
            e.contains(&format!("cert_file {crt}: cannot read it:")),
            "{e}"
        );
        assert!(
            e.starts_with(&format!("web config {}: ", f.path("web.yml").display())),
            "{e}"
        );

        put(f.dir.path(), "server.crt", "hello\n");
        let e = error(&settings);
        assert!(
            e.contains(&format!("cert_file {crt}: no certificate in it")),
            "{e}"
        );

        put(f.dir.path(), "server.crt", &f.server.key_pem);
        let e = error(&settings);
        assert!(
            e.contains("it holds a private key (are the certificate and key swapped?)"),
            "{e}"
        );
        assert!(!e.contains("BEGIN PRIVATE KEY"), "{e}");

        put(f.dir.path(), "server.crt", &f.server.cert_pem);
        put(f.dir.path(), "server.key", &f.server.cert_pem);
        let e = error(&settings);
        assert!(
            e.contains(&format!(
                "key_file {key}: no private key in it: it holds a certificate"
            )),
            "{e}"
        );

        let other = server_leaf(&f.ca, 3);
        put(f.dir.path(), "server.key", &other.key_pem);
        let e = error(&settings);
        assert!(e.contains(&format!("key_file {key}: the private key does not belong to the certificate in cert_file {crt}")), "{e}");
        assert!(!e.contains("PRIVATE"), "{e}");

        put(
            f.dir.path(),
            "server.key",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let e = error(&settings);
        assert!(e.contains("the private key is encrypted"), "{e}");

        put(
            f.dir.path(),
            "server.key",
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n",
        );
        let e = error(&settings);
        assert!(
            e.contains("has no END line") && !e.contains("c2VjcmV0"),
            "{e}"
        );

        put(f.dir.path(), "server.key", &f.server.key_pem);
        put(f.dir.path(), "ca.crt", "");
        let e = error(&f.settings(
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n",
        ));
        assert!(
            e.contains("client_ca_file") && e.contains("no certificate in it"),
            "{e}"
        );

        // Inline PEM works and is named as such.
        let inline = parse(
            &format!(
                "tls_server_config:\n  cert: |\n{}  key_file: server.key\n",
                f.server
                    .cert_pem
                    .lines()
                    .map(|l| format!("    {l}\n"))
                    .collect::<String>()
            ),
            &f.path("web.yml"),
        )
        .unwrap()
        .tls
        .unwrap();
        assert_eq!(Tls::new(&inline).unwrap().leaf_der(), f.server.der);
        let mut wrong = inline.clone();
        wrong.cert = PemSource::Inline("nothing".to_owned());
        let e = error(&wrong);
        assert!(
            e.contains("cert (written in the web config): no certificate in it"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn the_pinned_client_trusts_exactly_one_certificate() {
        let f = Fixture::new();
        let tls = f.tls("");
        let pinned = Arc::new(pinned_client_config(tls.leaf_der()));
        // Any name or address: the certificate is what is checked.
        for name in ["127.0.0.1", "localhost", "bbcrawl.invalid"] {
            let (server, client) = exchange(tls.server_config(), pinned.clone(), name).await;
            server.unwrap();
            assert_eq!(client.unwrap().leaf, f.server.der);
        }
        // Another certificate (same CA, same names) is refused.
        let other = server_leaf(&f.ca, 5);
        let (_, client) = exchange(
            tls.server_config(),
            Arc::new(pinned_client_config(other.der)),
            "127.0.0.1",
        )
        .await;
        let e = client.unwrap_err();
        assert!(e.contains("not the one this client trusts"), "{e}");
    }

    #[tokio::test]
    async fn reqwest_accepts_the_pinned_config() {
        let f = Fixture::new();
        let tls = f.tls("");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = TlsAcceptor::from(tls.server_config());
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut stream = acceptor.accept(tcp).await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early");
                request.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
            stream.shutdown().await.unwrap();
            request
        });
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(pinned_client_config(tls.leaf_der()))
            .build()
            .expect("reqwest takes the rustls config (same rustls version)");
        let body = tokio::time::timeout(Duration::from_secs(10), async {
            http.get(format!("https://{addr}/healthz"))
                .send()
                .await?
                .text()
                .await
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(body, "ok");
        let request = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(
            request.starts_with("GET /healthz HTTP/1.1\r\n"),
            "{request}"
        );
    }

    #[test]
    fn tls_can_be_shared_between_tasks() {
        fn shared<T: Send + Sync + Clone + 'static>() {}
        shared::<Tls>();
    }

    /// Not a test of behaviour: how long the per-handshake look at the files takes
    /// (printed with `--nocapture`; it is a few microseconds).
    #[test]
    fn the_per_handshake_check_is_cheap() {
        let f = Fixture::new();
        let tls =
            f.tls("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
        // Let the files settle as if written long ago.
        let old = SystemTime::now() - Duration::from_secs(60);
        for name in ["server.crt", "server.key", "ca.crt"] {
            let file = std::fs::File::options()
                .write(true)
                .open(f.path(name))
                .unwrap();
            file.set_modified(old).unwrap();
        }
        tls.refresh();
        let runs = 2000;
        let start = std::time::Instant::now();
        for _ in 0..runs {
            assert!(!tls.refresh());
        }
        let each = start.elapsed() / runs;
        println!("refresh with three unchanged files: {each:?}");
        assert!(each < Duration::from_millis(5), "{each:?}");
    }
}
