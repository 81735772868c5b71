//! Shards: several bbcrawl instances splitting one workspace's repositories
//! between them (`shard = "I/N"`, issue 16).
//!
//! Instance `I` of `N` crawls exactly the repositories whose **uuid** hashes
//! to `I`; every instance still reads the whole listing (it is how renames,
//! deletions and new repositories are seen), and keeps its own store,
//! credentials, request budget, change gate and audits — they are per
//! process anyway. A repository of another shard is never stored, counted
//! or audited by this one.
//!
//! The assignment is a contract other tools can reproduce (a loader that
//! wants to know which store holds a repository):
//!
//! ```text
//! key   = the repository uuid as Bitbucket writes it: lower case, in braces
//!         ("{6f0b1c2d-…}"; a uuid without braces gets them, surrounding
//!         spaces are dropped)
//! shard = (the first 8 bytes of SHA-256(key as UTF-8), big-endian) mod N
//! ```
//!
//! In a shell: `printf '%s' '{6f0b…}' | sha256sum | cut -c1-16` gives the
//! 64-bit number in hex; in Python,
//! `int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) % n`.
//!
//! Why the uuid and not the slug: a rename keeps the uuid, so a renamed
//! repository stays in its shard and its store. Why SHA-256: it is the same
//! in every language and on every platform (Rust's own hasher is randomised
//! per process), it needs no parameters, and its bits are uniform, so `mod
//! N` splits any set of uuids evenly; `sha2` is already a dependency.
//!
//! Shards are numbered from 0, like Kubernetes' pod and completion indexes,
//! so the index Kubernetes hands a pod is the shard as it is.

use std::fmt;

use sha2::{Digest, Sha256};

/// The most shards bbcrawl accepts: far more instances than any workspace
/// needs (a shard is one credential's budget), and a bound on the
/// `shard` label's values.
pub const MAX_SHARDS: u32 = 1024;

/// One shard of several: `index` of `count`, `0 <= index < count <= MAX_SHARDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    index: u32,
    count: u32,
}

/// Why a shard could not be made or parsed (the configuration names the
/// key and where it was set).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// The text is not `I/N` with two whole numbers.
    #[error("must be I/N, the shard index and the number of shards (such as 0/4; shards are numbered from 0) (got {0:?})")]
    Syntax(String),
    /// The number of shards is 0 or more than [`MAX_SHARDS`].
    #[error("the number of shards must be between 1 and {MAX_SHARDS} (got {0})")]
    Count(u64),
    /// The index is not below the number of shards.
    #[error("the shard index must be below the number of shards, {count} (shards are numbered from 0: 0 to {}) (got {index})", count - 1)]
    Index {
        /// The index given.
        index: u64,
        /// The number of shards.
        count: u32,
    },
}

impl Shard {
    /// Shard `index` of `count`.
    pub fn new(index: u64, count: u64) -> Result<Shard, ShardError> {
        let count = u32::try_from(count)
            .ok()
            .filter(|c| (1..=MAX_SHARDS).contains(c))
            .ok_or(ShardError::Count(count))?;
        let index = u32::try_from(index)
            .ok()
            .filter(|i| *i < count)
            .ok_or(ShardError::Index { index, count })?;
        Ok(Shard { index, count })
    }

    /// Parses `I/N` (spaces around either number are allowed).
    pub fn parse(text: &str) -> Result<Shard, ShardError> {
        let syntax = || ShardError::Syntax(text.to_owned());
        let (index, count) = text.split_once('/').ok_or_else(syntax)?;
        let number = |s: &str| {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            // All digits: only too many of them fails, and that is out of range.
            Ok(s.parse::<u64>().unwrap_or(u64::MAX))
        };
        Shard::new(number(index)?, number(count)?)
    }

    /// This shard's index, from 0.
    pub fn index(self) -> u32 {
        self.index
    }

    /// The number of shards.
    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether the repository with this uuid is this shard's.
    pub fn owns(self, uuid: &str) -> bool {
        shard_of(uuid, self.count) == self.index
    }
}

impl fmt::Display for Shard {
    /// `I/N`, as configured.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard (of `count`, at least 1) the repository with this uuid
/// belongs to; see the module documentation for the exact function.
pub fn shard_of(uuid: &str, count: u32) -> u32 {
    let digest = Sha256::digest(shard_key(uuid).as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let n = u64::from_be_bytes(first) % u64::from(count.max(1));
    // Below `count`, which is a u32.
    n as u32
}

/// The text that is hashed: the uuid trimmed, lower-cased, in braces.
pub fn shard_key(uuid: &str) -> String {
    let lower = uuid.trim().to_lowercase();
    let inner = lower
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(&lower);
    format!("{{{inner}}}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "{6f0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d}";

    #[test]
    fn the_hash_is_the_documented_sha256_prefix() {
        // `printf '%s' '{6f0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d}' | sha256sum`
        // starts with the 16 hex digits below (checked with coreutils).
        let first = u64::from_str_radix("cbda76ec9779f342", 16).unwrap();
        for count in [1u32, 2, 3, 4, 7, 16, 1024] {
            assert_eq!(
                u64::from(shard_of(UUID, count)),
                first % u64::from(count),
                "{count}"
            );
        }
    }

    #[test]
    fn case_braces_and_spaces_do_not_move_a_repository() {
        let variants = [
            UUID.to_owned(),
            UUID.to_uppercase(),
            UUID.trim_matches(|c| c == '{' || c == '}').to_owned(),
            format!("  {UUID} "),
        ];
        for v in &variants {
            assert_eq!(shard_key(v), UUID, "{v:?}");
            assert_eq!(shard_of(v, 1024), shard_of(UUID, 1024), "{v:?}");
        }
    }

    #[test]
    fn every_repository_has_exactly_one_shard_and_the_split_is_even() {
        let uuids: Vec<String> = (0..4000)
            .map(|i| format!("{{{i:08x}-0000-4000-8000-{:012x}}}", i * 7919))
            .collect();
        let shards: Vec<Shard> = (0..4).map(|i| Shard::new(i, 4).unwrap()).collect();
        let mut per_shard = [0usize; 4];
        for u in &uuids {
            let owners: Vec<&Shard> = shards.iter().filter(|s| s.owns(u)).collect();
            assert_eq!(owners.len(), 1, "{u}: {owners:?}");
            per_shard[owners[0].index() as usize] += 1;
        }
        // 1000 each on average; a uniform hash stays well within ±15 %.
        assert!(
            per_shard.iter().all(|n| (850..=1150).contains(n)),
            "{per_shard:?}"
        );
        // One shard of one owns everything.
        let all = Shard::new(0, 1).unwrap();
        assert!(uuids.iter().all(|u| all.owns(u)));
    }

    #[test]
    fn parses_index_slash_count() {
        let s = Shard::parse("2/4").unwrap();
        assert_eq!((s.index(), s.count()), (2, 4));
        assert_eq!(s.to_string(), "2/4");
        assert_eq!(Shard::parse(" 0 / 1 ").unwrap(), Shard::new(0, 1).unwrap());
        assert_eq!(
            Shard::parse("1023/1024").unwrap(),
            Shard::new(1023, 1024).unwrap()
        );
    }

    #[test]
    fn refuses_what_is_not_a_shard() {
        for bad in [
            "", "1", "1/", "/4", "a/4", "1/b", "-1/4", "+1/4", "1/4/8", "1.0/4", "1 2/4",
        ] {
            assert!(
                matches!(Shard::parse(bad), Err(ShardError::Syntax(_))),
                "{bad:?}: {:?}",
                Shard::parse(bad)
            );
        }
        assert_eq!(Shard::parse("0/0"), Err(ShardError::Count(0)));
        assert_eq!(Shard::parse("0/1025"), Err(ShardError::Count(1025)));
        assert_eq!(
            Shard::parse("0/99999999999999999999999"),
            Err(ShardError::Count(u64::MAX))
        );
        assert_eq!(
            Shard::parse("4/4"),
            Err(ShardError::Index { index: 4, count: 4 })
        );
        assert_eq!(
            Shard::parse("4/4").unwrap_err().to_string(),
            "the shard index must be below the number of shards, 4 (shards are numbered from 0: 0 to 3) (got 4)"
        );
    }
}
