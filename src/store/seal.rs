//! Every value of a schema-3 store but its schema version (four bytes that
//! every bbcrawl, older ones included, must read to refuse a newer store by
//! name) ends with a checksum: CRC-32 (the
//! `crc32fast` crate) of the key and the value, four bytes little-endian.
//! sled checks its own log records as it reads them from disk; the seal
//! also catches a value that is whole but not the one written under its
//! key (sled recovering a damaged log to the wrong version of a page, a
//! value copied under another key) and damage sled's checks let through.
//! Reading a value that fails its seal is the damaged-store error; `store
//! check` verifies every seal, and `store repair` drops what fails.
//!
//! Stores of schema 1 and 2 have unsealed values: they are read as they
//! are until opening migrates them (schema 2 → 3 seals each value in
//! place, see `migrate`).

/// Bytes a seal adds to a value.
pub const SEAL_BYTES: usize = 4;

fn crc(key: &[u8], value: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(key);
    h.update(value);
    h.finalize()
}

/// `value` sealed under `key`.
pub fn seal(key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + SEAL_BYTES);
    out.extend_from_slice(value);
    out.extend_from_slice(&crc(key, value).to_le_bytes());
    out
}

/// The length of the value inside `sealed`, if its seal holds for `key`.
pub fn payload_len(key: &[u8], sealed: &[u8]) -> Option<usize> {
    let n = sealed.len().checked_sub(SEAL_BYTES)?;
    let (value, tail) = sealed.split_at(n);
    (crc(key, value).to_le_bytes() == tail).then_some(n)
}

/// A sled batch whose inserted values are sealed.
#[derive(Default)]
pub struct Batch(pub(super) sled::Batch);

impl Batch {
    /// Inserts `value`, sealed, under `key`.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let key = key.as_ref();
        self.0.insert(key, seal(key, value.as_ref()));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: impl Into<sled::IVec>) {
        self.0.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seal_holds_for_its_key_and_value_only() {
        let sealed = seal(b"bkey", b"value");
        assert_eq!(sealed.len(), 5 + SEAL_BYTES);
        assert_eq!(payload_len(b"bkey", &sealed), Some(5));
        assert_eq!(payload_len(b"bkez", &sealed), None, "another key");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(payload_len(b"bkey", &bad), None, "byte {i} flipped");
        }
        assert_eq!(payload_len(b"bkey", &sealed[..3]), None);
        assert_eq!(payload_len(b"q", &seal(b"q", b"")), Some(0));
    }
}
