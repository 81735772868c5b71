//! `bbcrawl store backup DEST` and `bbcrawl store restore SRC`: a
//! consistent point-in-time copy of a store. The copy is made key by key
//! into a new sled database while the store's write gate is held, so no
//! batch (a page with its cursor) is applied during it: the copy holds
//! whole pages only, like the store after a crash, and a restored store
//! resumes crawling where the copy was taken. A new database is also
//! compact (no log to replay, no garbage). The destination must be a new or
//! empty directory: neither command overwrites a store.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::{create_private_dir, has_sled_files, make_private, open_error, open_sled};
use super::{Store, StoreError, ID_FILE};

/// What a backup or restore copied.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BackupReport {
    /// Keys copied.
    pub keys: u64,
    /// Bytes of keys and values copied.
    pub bytes: u64,
    /// Wall time of the copy.
    pub seconds: f64,
}

/// Keys per batch written to the copy.
const BATCH_KEYS: u64 = 10_000;

/// `dest` is missing or an empty directory; else why not.
fn fresh_destination(dest: &Path) -> Result<(), StoreError> {
    let refuse = |why: &str| StoreError::Io {
        path: dest.to_path_buf(),
        message: why.to_owned(),
    };
    match std::fs::read_dir(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(refuse(&format!("cannot use it as the destination: {e}"))),
        Ok(mut entries) => {
            if has_sled_files(dest) {
                Err(refuse("it holds a store, which this would overwrite; move it aside or choose a new directory"))
            } else if entries.next().is_some() {
                Err(refuse("it is not empty; choose a new or empty directory"))
            } else {
                Ok(())
            }
        }
    }
}

impl Store {
    /// Copies the store to the new or empty directory `dest` (see the
    /// module notes). Writers wait while it runs; readers do not.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupReport, StoreError> {
        fresh_destination(dest)?;
        let io = |what: &str, e: std::io::Error| StoreError::Io {
            path: dest.to_path_buf(),
            message: format!("{what}: {e}"),
        };
        create_private_dir(dest).map_err(|e| io("cannot create the directory", e))?;
        let started = Instant::now();
        let _gate = self.write_gate.write().unwrap_or_else(|e| e.into_inner());
        self.flush()?;
        // What the copy holds (no batch lands while the gate is held).
        let manifest = self.manifest_now()?;
        let out = open_sled(dest).map_err(|e| open_error(dest, e))?;
        let out_err = |e: sled::Error| super::sled_error(dest, e);
        let (mut keys, mut bytes) = (0u64, 0u64);
        let mut batch = sled::Batch::default();
        for kv in self.db()?.iter() {
            let (k, v) = kv.map_err(|e| self.err(e))?;
            keys += 1;
            bytes += (k.len() + v.len()) as u64;
            batch.insert(k, v);
            if keys % BATCH_KEYS == 0 {
                out.apply_batch(std::mem::take(&mut batch))
                    .map_err(out_err)?;
            }
        }
        out.apply_batch(batch).map_err(out_err)?;
        out.flush().map_err(out_err)?;
        drop(out);
        // The same store: the daemon and the CLI match it by this id.
        if let Ok(id) = std::fs::read(self.path.join(ID_FILE)) {
            super::write_atomically(&dest.join(ID_FILE), &id, 0o600)
                .map_err(|e| io("cannot write the store id", e))?;
        }
        manifest
            .write(dest)
            .map_err(|e| io("cannot write its manifest", e))?;
        make_private(dest).map_err(|e| io("cannot make it owner-only", e))?;
        Ok(BackupReport {
            keys,
            bytes,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Restores the backup in `src` as the store in `dest`, which must be new
/// or empty: a live store (or any store) there is never overwritten.
pub fn restore(src: &Path, dest: &Path) -> Result<BackupReport, StoreError> {
    fresh_destination(dest)?;
    let from = Store::open_existing(src)?;
    from.backup_to(dest)
}
