//! The key layout of the store: one sled tree, one byte of prefix per kind
//! of entry, binary and compact, so that a page of commits, its index
//! entries, its authors and the repository's cursor go into one atomic
//! `apply_batch`, and a million commits stay well under a gigabyte.
//!
//! | prefix | key                                         | value |
//! |--------|---------------------------------------------|-------|
//! | `m`    | `m` name                                    | meta (schema version, next repository id, last pass) |
//! | `r`    | `r` workspace `\0` repository-uuid          | repository record (JSON) |
//! | `c`    | `c` repo-id hash                            | commit (postcard, see `codec`) |
//! | `d`    | `d` repo-id date ¬hash                      | reachable flag (by repository, newest last) |
//! | `a`    | `a` identity `\0` date ¬hash ¬repo-id       | reachable flag (by author identity and date) |
//! | `u`    | `u` identity                                | author record (JSON: names, e-mails, account) |
//!
//! Two date indexes only: each extra index entry costs write throughput and
//! (through sled's space amplification) about as much disk as the commit
//! itself. Queries over everything merge the per-repository streams; `show`
//! finds a hash prefix with one short range scan of `c` per repository.
//!
//! - `repo-id`: a u32 given to each repository when first stored (big-endian).
//! - `hash`: the 20 bytes of the 40-hex commit hash; `¬hash` its bitwise
//!   complement, `¬repo-id` likewise, so a *reverse* scan yields newest
//!   first, then hash ascending, then repository id ascending — the order
//!   queries print.
//! - `date`: the commit instant in UTC milliseconds (rounded down; the
//!   commit record keeps the rest) as a big-endian u64 with the sign bit
//!   flipped, so byte order is time order.
//! - `identity`: the author's account uuid when known, else the lower-cased
//!   e-mail, else the raw string (never contains `\0`).

use chrono::{DateTime, TimeZone, Utc};

/// Schema version written by this build. Bump it when the layout changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Meta key holding the schema version.
pub const META_SCHEMA: &[u8] = b"mschema";
/// Meta key holding the next repository id.
pub const META_NEXT_ID: &[u8] = b"mnext_repo_id";
/// Meta key holding the last pass summary.
pub const META_LAST_PASS: &[u8] = b"mlast_pass";

/// Repository records.
pub const REPO: u8 = b'r';
/// Commit records.
pub const COMMIT: u8 = b'c';
/// (repository, date) index.
pub const BY_REPO: u8 = b'd';
/// (author, date) index.
pub const BY_AUTHOR: u8 = b'a';
/// Author records.
pub const AUTHOR: u8 = b'u';

/// Bytes of a binary hash.
pub const HASH_BYTES: usize = 20;

/// A commit hash as 20 bytes.
pub type Hash = [u8; HASH_BYTES];

/// Parses a 40-hex hash.
pub fn parse_hash(hex: &str) -> Option<Hash> {
    let b = hex.as_bytes();
    if b.len() != 2 * HASH_BYTES {
        return None;
    }
    let mut out = [0u8; HASH_BYTES];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// A hash as 40 lower-case hex digits.
pub fn hash_hex(h: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(h.len() * 2);
    for b in h {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn not(bytes: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bytes.iter().map(|b| !b)
}

/// `date8` of an instant.
pub fn date8(at: DateTime<Utc>) -> [u8; 8] {
    ((at.timestamp_millis() as u64) ^ (1 << 63)).to_be_bytes()
}

/// The instant of a `date8`.
pub fn from_date8(b: &[u8]) -> Option<DateTime<Utc>> {
    let raw: [u8; 8] = b.get(..8)?.try_into().ok()?;
    let ms = (u64::from_be_bytes(raw) ^ (1 << 63)) as i64;
    Utc.timestamp_millis_opt(ms).single()
}

/// Key of a repository record.
pub fn repo(ws: &str, uuid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + ws.len() + uuid.len());
    k.push(REPO);
    k.extend(ws.bytes().filter(|b| *b != 0));
    k.push(0);
    k.extend(uuid.bytes().filter(|b| *b != 0));
    k
}

/// Prefix of every commit of one repository.
pub fn commit_prefix(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + HASH_BYTES);
    k.push(COMMIT);
    k.extend(id.to_be_bytes());
    k
}

/// Key of a commit record.
pub fn commit(id: u32, hash: &Hash) -> Vec<u8> {
    let mut k = commit_prefix(id);
    k.extend(hash);
    k
}

/// Prefix of the (repository, date) index of one repository.
pub fn by_repo_prefix(id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + 8 + HASH_BYTES);
    k.push(BY_REPO);
    k.extend(id.to_be_bytes());
    k
}

/// (repository, date) index key.
pub fn by_repo(id: u32, at: DateTime<Utc>, hash: &Hash) -> Vec<u8> {
    let mut k = by_repo_prefix(id);
    k.extend(date8(at));
    k.extend(not(hash));
    k
}

/// Prefix of the (author, date) index of one identity.
pub fn by_author_prefix(identity: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + identity.len() + 8 + HASH_BYTES + 4);
    k.push(BY_AUTHOR);
    k.extend(identity.bytes().filter(|b| *b != 0));
    k.push(0);
    k
}

/// (author, date) index key.
pub fn by_author(identity: &str, at: DateTime<Utc>, hash: &Hash, id: u32) -> Vec<u8> {
    let mut k = by_author_prefix(identity);
    k.extend(date8(at));
    k.extend(not(hash));
    k.extend(not(&id.to_be_bytes()));
    k
}

/// Key of an author record.
pub fn author(identity: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + identity.len());
    k.push(AUTHOR);
    k.extend(identity.bytes().filter(|b| *b != 0));
    k
}

/// One entry of a date-ordered index: which commit, when, and whether it
/// is still reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Commit instant.
    pub at: DateTime<Utc>,
    /// Commit hash.
    pub hash: Hash,
    /// Repository id.
    pub repo: u32,
    /// Reachable from its default branch.
    pub reachable: bool,
}

impl IndexEntry {
    /// The index order: newest first to the millisecond, then hash, then
    /// repository. Queries print in this order but sort the commits of one
    /// millisecond by their full dates first.
    pub fn order_key(&self) -> (std::cmp::Reverse<DateTime<Utc>>, Hash, u32) {
        (std::cmp::Reverse(self.at), self.hash, self.repo)
    }
}

fn tail_entry(tail: &[u8], repo: Option<u32>, value: &[u8]) -> Option<IndexEntry> {
    let at = from_date8(tail)?;
    let inv: &[u8] = tail.get(8..8 + HASH_BYTES)?;
    let mut hash = [0u8; HASH_BYTES];
    for (o, b) in hash.iter_mut().zip(inv) {
        *o = !b;
    }
    let repo = match repo {
        Some(id) => id,
        None => {
            let raw: [u8; 4] = tail
                .get(8 + HASH_BYTES..8 + HASH_BYTES + 4)?
                .try_into()
                .ok()?;
            !u32::from_be_bytes(raw)
        }
    };
    Some(IndexEntry {
        at,
        hash,
        repo,
        reachable: value.first().is_none_or(|v| *v != 0),
    })
}

/// Decodes a `d` key (and its value).
pub fn parse_by_repo(key: &[u8], value: &[u8]) -> Option<IndexEntry> {
    let id = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?);
    tail_entry(key.get(5..)?, Some(id), value)
}

/// Decodes an `a` key whose identity prefix is `prefix_len` long.
pub fn parse_by_author(key: &[u8], prefix_len: usize, value: &[u8]) -> Option<IndexEntry> {
    tail_entry(key.get(prefix_len..)?, None, value)
}

/// Splits an `a` key into its identity and entry.
pub fn split_by_author(key: &[u8], value: &[u8]) -> Option<(String, IndexEntry)> {
    let end = key.iter().skip(1).position(|b| *b == 0)? + 1;
    let identity = std::str::from_utf8(&key[1..end]).ok()?.to_owned();
    Some((identity, parse_by_author(key, end + 1, value)?))
}

/// Reachable flag as an index value.
pub fn flag(reachable: bool) -> [u8; 1] {
    [u8::from(reachable)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn date_keys_sort_in_time_order_across_the_epoch() {
        let a = Utc.timestamp_millis_opt(-5_000).unwrap();
        let b = Utc.timestamp_millis_opt(0).unwrap();
        let c = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        assert!(date8(a) < date8(b) && date8(b) < date8(c));
        assert_eq!(from_date8(&date8(c)), Some(c));
    }

    #[test]
    fn hashes_round_trip_and_reject_non_hex() {
        let h = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(hash_hex(&parse_hash(h).unwrap()), h);
        assert!(parse_hash("xyz").is_none());
        assert!(parse_hash(&h.replace('0', "g")).is_none());
    }

    #[test]
    fn index_keys_round_trip_and_reverse_scans_give_print_order() {
        let h1 = parse_hash("1111111111111111111111111111111111111111").unwrap();
        let h2 = parse_hash("2222222222222222222222222222222222222222").unwrap();
        let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        let later = Utc.timestamp_millis_opt(1_700_000_000_001).unwrap();
        let e = parse_by_repo(&by_repo(9, at, &h2), &flag(false)).unwrap();
        assert_eq!((e.at, e.hash, e.repo, e.reachable), (at, h2, 9, false));
        let (id, e) = split_by_author(&by_author("jane@x", at, &h1, 3), &flag(true)).unwrap();
        assert_eq!(
            (id.as_str(), e.at, e.hash, e.repo, e.reachable),
            ("jane@x", at, h1, 3, true)
        );
        // Reverse key order = newest first, then hash ascending, then repo ascending.
        let mut keys = [
            by_author("x", at, &h2, 1),
            by_author("x", later, &h2, 1),
            by_author("x", at, &h1, 2),
            by_author("x", at, &h1, 1),
        ];
        keys.sort();
        keys.reverse();
        let order: Vec<_> = keys
            .iter()
            .map(|k| split_by_author(k, &[1]).unwrap().1)
            .collect();
        let mut expected = order.clone();
        expected.sort_by_key(|e| e.order_key());
        assert_eq!(order, expected);
        assert_eq!(order[0].at, later);
        assert_eq!((order[1].hash, order[1].repo), (h1, 1));
    }
}
