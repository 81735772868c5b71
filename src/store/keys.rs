//! The key layout of the store: one sled tree, one byte of prefix per kind
//! of entry, binary and compact, so that a page of commits, its postings,
//! its aggregates and the repository's cursor go into one atomic
//! `apply_batch`.
//!
//! Schema 2 keeps what sled tracks proportional to *pages* and *authors*
//! (two keys per block, one per 64 commits of an author), not commits (sled splits a leaf past 16 entries and keeps every node in
//! its page table, so a key per commit is what made schema 1 grow):
//!
//! | prefix | key                                      | value |
//! |--------|------------------------------------------|-------|
//! | `m`    | `m` name                                 | meta (schema version, next repository id, last pass, totals, write sequence) |
//! | `r`    | `r` workspace `\0` repository-uuid        | repository record (JSON, with its commit counts) |
//! | `b`    | `b` repo-id seq                          | block: the new commits of one stored page (see `block`) |
//! | `s`    | `s` repo-id seq                          | block summary: newest and oldest millisecond, count, hash-prefix filter |
//! | `p`    | `p` identity `\0` chunk                   | author postings: (date, repo-id, seq, slot) × ≤ 64, in write order |
//! | `g`    | `g` identity                             | author aggregate (postcard: commits, unreachable, first, last, repository count) |
//! | `q`    | `q` identity `\0` repo-id                 | (empty) the author has commits in the repository |
//! | `u`    | `u` identity                             | author record (JSON: names, e-mails, account) |
//! | `f`    | `f` first-seq                            | change-feed entry (postcard, see `feed`) |
//!
//! - `repo-id`: a u32 given to each repository when first stored; `seq` a
//!   u32 counting that repository's blocks in write order (both big-endian).
//! - `identity`: the author's account uuid when known, else the lower-cased
//!   e-mail, else the raw string (never contains `\0`).
//! - `date`: the commit instant in UTC milliseconds (rounded down; the
//!   block keeps the rest) as a big-endian u64 with the sign bit flipped.
//!
//! Schema 1 (read only to migrate it, see `migrate`) had a key per commit
//! (`c` repo-id hash → postcard record, see `codec`) and two per-commit
//! date indexes (`d` repo-id date ¬hash, `a` identity `\0` date ¬hash
//! ¬repo-id, each → a reachable flag).

use chrono::{DateTime, TimeZone, Utc};

/// Schema version written by this build. Bump it when the layout changes.
/// 3: schema 2's layout with every value sealed (see `seal`).
/// 4: schema 3 with the change feed (`f` keys, see `feed`).
pub const SCHEMA_VERSION: u32 = 4;

/// Meta key holding the schema version.
pub const META_SCHEMA: &[u8] = b"mschema";
/// Meta key holding the next repository id.
pub const META_NEXT_ID: &[u8] = b"mnext_repo_id";
/// Meta key holding the last pass summary.
pub const META_LAST_PASS: &[u8] = b"mlast_pass";
/// Meta key holding the store totals (postcard, see `Totals`).
pub const META_TOTALS: &[u8] = b"mtotals";
/// Meta key holding the store's write sequence (u64, big-endian): one more
/// in every batch (see `manifest`).
pub const META_SEQ: &[u8] = b"mseq";
/// Meta key holding the next change-feed seq (u64, big-endian; see `feed`).
pub const META_FEED_NEXT: &[u8] = b"mfeed_next";
/// Meta key, only while a store's feed is being filled in at open: how far
/// it got (see `feed`).
pub const META_FEED_BACKFILL: &[u8] = b"mfeed_backfill";
/// Meta key holding the last accepted webhook delivery and webhook walk
/// (JSON, see `hooks::HookStatus`).
pub const META_HOOKS: &[u8] = b"mhooks";
/// Meta key, only while schema 2 → 3 runs: the last key sealed (see
/// `migrate::seal_in_place`).
pub const META_SEALED_UPTO: &[u8] = b"msealed_upto";

/// Blocks of commits.
pub const BLOCK: u8 = b'b';
/// Block summaries.
pub const SUMMARY: u8 = b's';
/// Author postings.
pub const POSTING: u8 = b'p';
/// Author aggregates.
pub const AUTHOR_STATS: u8 = b'g';
/// (author, repository) pairs.
pub const AUTHOR_REPO: u8 = b'q';

/// Repository records.
pub const REPO: u8 = b'r';
/// Commit records (schema 1).
pub const COMMIT: u8 = b'c';
/// (repository, date) index (schema 1).
pub const BY_REPO: u8 = b'd';
/// (author, date) index (schema 1).
pub const BY_AUTHOR: u8 = b'a';
/// Author records.
pub const AUTHOR: u8 = b'u';

/// Bytes of a binary hash.
pub const HASH_BYTES: usize = 20;

/// A commit hash as 20 bytes.
pub type Hash = [u8; HASH_BYTES];

/// What a key holds, in words (for errors).
pub fn describe(key: &[u8]) -> String {
    let ids = |k: &[u8]| -> Option<(u32, u32)> {
        Some((
            u32::from_be_bytes(k.get(1..5)?.try_into().ok()?),
            u32::from_be_bytes(k.get(5..9)?.try_into().ok()?),
        ))
    };
    let text =
        |k: &[u8]| String::from_utf8_lossy(k.get(1..).unwrap_or_default()).replace('\0', " ");
    match key.first() {
        Some(&BLOCK) | Some(&SUMMARY) => match ids(key) {
            Some((id, seq)) => format!(
                "{} {seq} of repository {id}",
                if key[0] == BLOCK {
                    "block"
                } else {
                    "the summary of block"
                }
            ),
            None => "a block".into(),
        },
        Some(&POSTING) => format!("the postings of author {}", text(key)),
        Some(&AUTHOR_STATS) => format!("the aggregate of author {}", text(key)),
        Some(&AUTHOR_REPO) => "an (author, repository) pair".into(),
        Some(&AUTHOR) => format!("the record of author {}", text(key)),
        Some(&REPO) => format!("the record of repository {}", text(key)),
        Some(b'm') => format!("the store's {}", text(key)),
        _ => "a value".into(),
    }
}

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

/// Key of a block (`BLOCK`) or its summary (`SUMMARY`).
pub fn block(kind: u8, id: u32, seq: u32) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = kind;
    k[1..5].copy_from_slice(&id.to_be_bytes());
    k[5..9].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Prefix of one repository's blocks (`BLOCK`) or summaries (`SUMMARY`).
pub fn blocks_prefix(kind: u8, id: u32) -> [u8; 5] {
    let mut k = [0u8; 5];
    k[0] = kind;
    k[1..5].copy_from_slice(&id.to_be_bytes());
    k
}

/// (repository id, seq) of a block or summary key.
pub fn parse_block(key: &[u8]) -> Option<(u32, u32)> {
    let id = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?);
    let seq = u32::from_be_bytes(key.get(5..9)?.try_into().ok()?);
    (key.len() == 9).then_some((id, seq))
}

/// Prefix of one identity's postings.
pub fn postings_prefix(identity: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + identity.len() + 16);
    k.push(POSTING);
    k.extend(identity.bytes().filter(|b| *b != 0));
    k.push(0);
    k
}

/// Key of one chunk of an identity's postings. Chunk `n` holds their
/// postings `64n` to `64n + 63` in write order; the aggregate's commit
/// count says which chunk is the last and how full (no scan needed).
pub fn postings(identity: &str, chunk: u32) -> Vec<u8> {
    let mut k = postings_prefix(identity);
    k.extend(chunk.to_be_bytes());
    k
}

/// (identity, chunk) of a postings key.
pub fn parse_postings(key: &[u8]) -> Option<(&str, u32)> {
    let end = key.len().checked_sub(5)?;
    if key.first() != Some(&POSTING) || key.get(end) != Some(&0) {
        return None;
    }
    let identity = std::str::from_utf8(key.get(1..end)?).ok()?;
    let chunk = u32::from_be_bytes(key.get(end + 1..end + 5)?.try_into().ok()?);
    Some((identity, chunk))
}

/// Key marking that an identity has commits in a repository (written
/// once: the aggregate counts repositories without listing them).
pub fn author_repo(identity: &str, id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(6 + identity.len());
    k.push(AUTHOR_REPO);
    k.extend(identity.bytes().filter(|b| *b != 0));
    k.push(0);
    k.extend(id.to_be_bytes());
    k
}

/// Key of an author aggregate.
pub fn author_stats(identity: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + identity.len());
    k.push(AUTHOR_STATS);
    k.extend(identity.bytes().filter(|b| *b != 0));
    k
}

/// Bytes of one posting: instant in ms, repository id, block seq, slot.
pub const POSTING_BYTES: usize = 17;

/// Postings per chunk: the last chunk is rewritten as postings join it.
pub const POSTINGS_PER_CHUNK: u64 = 64;

/// One author posting: where a commit of theirs is stored, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    /// Commit instant in ms (rounded down).
    pub ms: i64,
    /// Repository id.
    pub repo: u32,
    /// Block seq.
    pub seq: u32,
    /// Slot in the block.
    pub slot: u8,
}

impl Posting {
    /// Appends the stored bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend(((self.ms as u64) ^ (1 << 63)).to_be_bytes());
        out.extend(self.repo.to_be_bytes());
        out.extend(self.seq.to_be_bytes());
        out.push(self.slot);
    }

    /// The identity and postings of one chunk (`None` when malformed).
    pub fn decode_all(key: &[u8], value: &[u8]) -> Option<(String, Vec<Posting>)> {
        let (identity, _) = parse_postings(key)?;
        if !value.len().is_multiple_of(POSTING_BYTES) {
            return None;
        }
        let postings = value
            .chunks_exact(POSTING_BYTES)
            .map(|b| {
                Some(Posting {
                    ms: (u64::from_be_bytes(b[0..8].try_into().ok()?) ^ (1 << 63)) as i64,
                    repo: u32::from_be_bytes(b[8..12].try_into().ok()?),
                    seq: u32::from_be_bytes(b[12..16].try_into().ok()?),
                    slot: b[16],
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some((identity.to_owned(), postings))
    }
}

/// Bits of a block summary's hash-prefix filter (one per first 12 bits).
pub const FILTER_BITS: usize = 4096;

/// The filter bit of a hash (or a prefix of ≥ 3 hex digits, as bytes).
pub fn filter_bit(first_two: [u8; 2]) -> usize {
    ((first_two[0] as usize) << 4) | (first_two[1] as usize >> 4)
}

/// A block's summary: what a reader needs to choose blocks without
/// opening them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Repository id.
    pub repo: u32,
    /// Block seq.
    pub seq: u32,
    /// Newest commit instant in ms.
    pub max_ms: i64,
    /// Oldest commit instant in ms.
    pub min_ms: i64,
    /// Commits in the block.
    pub count: u32,
    /// Bit `filter_bit(hash)` set for each hash in the block.
    pub filter: Vec<u8>,
}

impl Summary {
    /// The summary of a block of `hashes` with these instants.
    pub fn of(repo: u32, seq: u32, hashes: &[Hash], ms: impl Iterator<Item = i64>) -> Summary {
        let (mut min_ms, mut max_ms) = (i64::MAX, i64::MIN);
        for m in ms {
            min_ms = min_ms.min(m);
            max_ms = max_ms.max(m);
        }
        let mut filter = vec![0u8; FILTER_BITS / 8];
        for h in hashes {
            let bit = filter_bit([h[0], h[1]]);
            filter[bit / 8] |= 1 << (bit % 8);
        }
        Summary {
            repo,
            seq,
            max_ms,
            min_ms,
            count: hashes.len() as u32,
            filter,
        }
    }

    /// Whether the block may hold a hash whose filter bit is `bit`.
    pub fn may_hold(&self, bit: usize) -> bool {
        self.filter
            .get(bit / 8)
            .is_some_and(|b| b & (1 << (bit % 8)) != 0)
    }

    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(20 + self.filter.len());
        v.extend(self.max_ms.to_be_bytes());
        v.extend(self.min_ms.to_be_bytes());
        v.extend(self.count.to_be_bytes());
        v.extend(&self.filter);
        v
    }

    /// From a summary key and value.
    pub fn decode(key: &[u8], value: &[u8]) -> Option<Summary> {
        let (repo, seq) = parse_block(key)?;
        if value.len() != 20 + FILTER_BITS / 8 {
            return None;
        }
        Some(Summary {
            repo,
            seq,
            max_ms: i64::from_be_bytes(value[0..8].try_into().ok()?),
            min_ms: i64::from_be_bytes(value[8..16].try_into().ok()?),
            count: u32::from_be_bytes(value[16..20].try_into().ok()?),
            filter: value[20..].to_vec(),
        })
    }
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
    fn postings_round_trip() {
        let k = postings("jane@x", 7);
        assert_eq!(parse_postings(&k), Some(("jane@x", 7)));
        let ps = [
            Posting {
                ms: -5_000,
                repo: 1,
                seq: 2,
                slot: 3,
            },
            Posting {
                ms: 1_700_000_000_000,
                repo: u32::MAX,
                seq: 0,
                slot: 99,
            },
        ];
        let mut v = Vec::new();
        for p in &ps {
            p.encode(&mut v);
        }
        assert_eq!(
            Posting::decode_all(&k, &v),
            Some(("jane@x".to_owned(), ps.to_vec()))
        );
        assert_eq!(Posting::decode_all(&k, &v[1..]), None);
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
