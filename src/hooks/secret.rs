//! The webhooks' HMAC secret: read from `hooks_secret_file`, re-read when
//! the file changes (`bbcrawl hooks install` rotates it while the daemon
//! runs), and the one check every delivery passes before anything else
//! looks at it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How long the secret a rotation replaced is still accepted: deliveries
/// Bitbucket signed just before `hooks install` changed the hook (and its
/// two immediate retries) still pass.
pub const PREVIOUS_SECRET_GRACE: Duration = Duration::from_secs(600);

/// The file is looked at (one `stat`) at most this often.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A secret file larger than this is not a secret (and is not read).
const MAX_SECRET_BYTES: u64 = 4096;

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// It could not be read.
    #[error("cannot read hooks_secret_file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It holds nothing usable.
    #[error("hooks_secret_file {} {what}", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the contents).
        what: &'static str,
    },
}

/// Why a delivery's signature was refused (the metric's `outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureRefusal {
    /// No `X-Hub-Signature` header.
    Unsigned,
    /// A header that is not `sha256=<64 hex digits>`, or does not match.
    BadSignature,
}

/// The secret in force (and the one it replaced, for a while).
pub struct HookSecret {
    path: PathBuf,
    keys: Mutex<Keys>,
}

struct Keys {
    current: Vec<u8>,
    previous: Option<(Vec<u8>, Instant)>,
    stamp: Option<(SystemTime, u64)>,
    looked: Instant,
}

impl std::fmt::Debug for HookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookSecret")
            .field("path", &self.path)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl HookSecret {
    /// Reads the secret file (the daemon refuses to start without a usable
    /// one: exit 2).
    pub fn load(path: &Path) -> Result<HookSecret, SecretError> {
        let current = read_secret(path)?;
        Ok(HookSecret {
            path: path.to_owned(),
            keys: Mutex::new(Keys {
                current,
                previous: None,
                stamp: stamp(path),
                looked: Instant::now(),
            }),
        })
    }

    /// The file it reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks `X-Hub-Signature` (`sha256=<hex>`, an HMAC-SHA256 of the raw
    /// `body`) in constant time against the secret in force, or the one it
    /// replaced within [`PREVIOUS_SECRET_GRACE`].
    pub fn verify(&self, header: Option<&[u8]>, body: &[u8]) -> Result<(), SignatureRefusal> {
        let header = header.ok_or(SignatureRefusal::Unsigned)?;
        let signature = parse_signature(header).ok_or(SignatureRefusal::BadSignature)?;
        let keys = self.refreshed();
        let matches = |key: &[u8]| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(body);
            mac.verify_slice(&signature).is_ok()
        };
        if matches(&keys.current) {
            return Ok(());
        }
        match &keys.previous {
            Some((key, replaced)) if replaced.elapsed() < PREVIOUS_SECRET_GRACE && matches(key) => {
                Ok(())
            }
            _ => Err(SignatureRefusal::BadSignature),
        }
    }

    /// The keys, after re-reading the file if it changed (looked at once a
    /// second at most; a file that became unreadable or empty keeps the
    /// secret in force, with a warning).
    fn refreshed(&self) -> std::sync::MutexGuard<'_, Keys> {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.looked.elapsed() >= LOOK_EVERY {
            keys.looked = Instant::now();
            let now = stamp(&self.path);
            if now != keys.stamp {
                keys.stamp = now;
                match read_secret(&self.path) {
                    Ok(new) if new != keys.current => {
                        let old = std::mem::replace(&mut keys.current, new);
                        keys.previous = Some((old, Instant::now()));
                        tracing::info!(path = %self.path.display(), "webhook secret changed; the previous one is accepted for 10 more minutes");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping the webhook secret in force")
                    }
                }
            }
        }
        keys
    }
}

/// `sha256=<64 hex digits>` (either case) as 32 bytes.
fn parse_signature(header: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (algo, hex) = text.split_once('=')?;
    if !algo.eq_ignore_ascii_case("sha256") || hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `sha256=<hex>` of `body` with `secret`: what Bitbucket sends.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The secret in a file: its text without surrounding whitespace (a
/// trailing newline from an editor or `echo` is not part of it).
pub fn read_secret(path: &Path) -> Result<Vec<u8>, SecretError> {
    let read = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if !meta.is_file() {
        return Err(SecretError::Unusable {
            path: path.to_owned(),
            what: "is not a regular file",
        });
    }
    if meta.len() > MAX_SECRET_BYTES {
        return Err(SecretError::Unusable {
            path: path.to_owned(),
            what: "is larger than 4 KiB: not a secret",
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let text = bytes.trim_ascii();
    if text.is_empty() {
        return Err(SecretError::Unusable {
            path: path.to_owned(),
            what: "is empty (`bbcrawl hooks install` writes one)",
        });
    }
    Ok(text.to_vec())
}

/// A fresh secret: 32 random bytes from the operating system, as 64 hex
/// digits.
pub fn generate_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A secret staged beside its file: written and synced, owner-only (0600),
/// put in place by [`StagedSecret::commit`] (an atomic rename), removed if
/// dropped uncommitted.
pub struct StagedSecret {
    tmp: Option<tempfile::NamedTempFile>,
    path: PathBuf,
}

impl StagedSecret {
    /// Writes `secret` to a temporary file in `path`'s directory.
    pub fn write(path: &Path, secret: &str) -> std::io::Result<StagedSecret> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        // tempfile creates its files 0600.
        let mut tmp = tempfile::Builder::new()
            .prefix(".bbcrawl-hook-secret")
            .tempfile_in(dir)?;
        tmp.write_all(secret.as_bytes())?;
        tmp.write_all(b"\n")?;
        tmp.as_file().sync_all()?;
        Ok(StagedSecret {
            tmp: Some(tmp),
            path: path.to_owned(),
        })
    }

    /// Replaces the secret file with the staged one.
    pub fn commit(mut self) -> std::io::Result<()> {
        if let Some(tmp) = self.tmp.take() {
            tmp.persist(&self.path).map_err(|e| e.error)?;
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_with_its_secret_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = HookSecret::load(&path).unwrap();
        let body = br#"{"push":{}}"#;
        let good = signature(b"s3cret", body);
        assert_eq!(secret.verify(Some(good.as_bytes()), body), Ok(()));
        assert_eq!(
            secret.verify(
                Some(good.to_uppercase().replace("SHA256", "sha256").as_bytes()),
                body
            ),
            Ok(())
        );
        let other = signature(b"other", body);
        assert_eq!(
            secret.verify(Some(other.as_bytes()), body),
            Err(SignatureRefusal::BadSignature)
        );
        assert_eq!(
            secret.verify(Some(good.as_bytes()), b"{}"),
            Err(SignatureRefusal::BadSignature)
        );
        assert_eq!(secret.verify(None, body), Err(SignatureRefusal::Unsigned));
        for bad in ["sha1=abc", "sha256=zz", "sha256=", "", &good[..70]] {
            assert_eq!(
                secret.verify(Some(bad.as_bytes()), body),
                Err(SignatureRefusal::BadSignature),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_rotated_secret_is_picked_up_and_the_old_one_kept_for_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "old").unwrap();
        let secret = HookSecret::load(&path).unwrap();
        StagedSecret::write(&path, "new-and-longer")
            .unwrap()
            .commit()
            .unwrap();
        secret.keys.lock().unwrap().looked -= LOOK_EVERY;
        let body = b"x";
        assert_eq!(
            secret.verify(Some(signature(b"new-and-longer", body).as_bytes()), body),
            Ok(())
        );
        assert_eq!(
            secret.verify(Some(signature(b"old", body).as_bytes()), body),
            Ok(())
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn an_empty_or_missing_secret_file_is_refused_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert!(matches!(
            HookSecret::load(&path),
            Err(SecretError::Read { .. })
        ));
        std::fs::write(&path, " \n").unwrap();
        let e = HookSecret::load(&path).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        assert_eq!(generate_secret().len(), 64);
        assert_ne!(generate_secret(), generate_secret());
    }
}
