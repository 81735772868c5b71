//! The key layout of the store: one sled tree, one byte of prefix per kind
//! of entry, so that a page of commits, its index entries and the
//! repository's cursor go into one atomic `apply_batch`.
//!
//! | prefix | key                                              | value                 |
//! |--------|--------------------------------------------------|-----------------------|
//! | `m`    | `m` name                                         | meta (schema version, last pass) |
//! | `r`    | `r` ws `\0` repo-uuid                            | [`RepoState`] JSON    |
//! | `c`    | `c` ws `\0` repo-uuid `\0` hash                  | [`StoredCommit`] JSON |
//! | `d`    | `d` ws `\0` repo-uuid `\0` date8 hash            | empty (by repository and date) |
//! | `a`    | `a` author-identity `\0` date8 ws `\0` repo-uuid `\0` hash | empty (by author and date) |
//! | `t`    | `t` date8 ws `\0` repo-uuid `\0` hash            | empty (everything by date) |
//! | `h`    | `h` hash ws `\0` repo-uuid                       | empty (by hash, for `show`) |
//!
//! `date8` is the commit instant in UTC milliseconds, as a big-endian u64
//! with the sign bit flipped, so byte order is time order. Hashes are 40
//! lower-case hex digits (fixed width, so no separator is needed after a
//! date). Names never contain `\0` (workspaces, slugs and uuids cannot;
//! identities are stripped of it).
//!
//! [`RepoState`]: super::RepoState
//! [`StoredCommit`]: super::StoredCommit

use chrono::{DateTime, TimeZone, Utc};

/// Schema version written by this build. Bump it when the layout changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Meta key holding the schema version.
pub const META_SCHEMA: &[u8] = b"mschema";
/// Meta key holding the last pass summary.
pub const META_LAST_PASS: &[u8] = b"mlast_pass";

/// Prefix bytes.
pub const REPO: u8 = b'r';
/// Commit records.
pub const COMMIT: u8 = b'c';
/// (repository, date) index.
pub const BY_REPO_DATE: u8 = b'd';
/// (author, date) index.
pub const BY_AUTHOR_DATE: u8 = b'a';
/// (date) index.
pub const BY_DATE: u8 = b't';
/// (hash) index.
pub const BY_HASH: u8 = b'h';

/// Length of a full hash.
pub const HASH_LEN: usize = 40;

fn clean(s: &str) -> impl Iterator<Item = u8> + '_ {
    s.bytes().filter(|b| *b != 0)
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

/// `prefix ws \0 uuid`.
pub fn repo_scoped(prefix: u8, ws: &str, uuid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + ws.len() + uuid.len());
    k.push(prefix);
    k.extend(clean(ws));
    k.push(0);
    k.extend(clean(uuid));
    k
}

/// Key of a repository record.
pub fn repo(ws: &str, uuid: &str) -> Vec<u8> {
    repo_scoped(REPO, ws, uuid)
}

/// Prefix of every commit of one repository (ends with `\0`).
pub fn commit_prefix(ws: &str, uuid: &str) -> Vec<u8> {
    let mut k = repo_scoped(COMMIT, ws, uuid);
    k.push(0);
    k
}

/// Key of a commit record.
pub fn commit(ws: &str, uuid: &str, hash: &str) -> Vec<u8> {
    let mut k = commit_prefix(ws, uuid);
    k.extend(clean(hash));
    k
}

/// Prefix of the (repository, date) index of one repository.
pub fn by_repo_prefix(ws: &str, uuid: &str) -> Vec<u8> {
    let mut k = repo_scoped(BY_REPO_DATE, ws, uuid);
    k.push(0);
    k
}

/// (repository, date) index entry.
pub fn by_repo(ws: &str, uuid: &str, at: DateTime<Utc>, hash: &str) -> Vec<u8> {
    let mut k = by_repo_prefix(ws, uuid);
    k.extend(date8(at));
    k.extend(clean(hash));
    k
}

/// Prefix of the (author, date) index of one identity (ends with `\0`).
pub fn by_author_prefix(identity: &str) -> Vec<u8> {
    let mut k = vec![BY_AUTHOR_DATE];
    k.extend(clean(identity));
    k.push(0);
    k
}

/// (author, date) index entry.
pub fn by_author(identity: &str, at: DateTime<Utc>, ws: &str, uuid: &str, hash: &str) -> Vec<u8> {
    let mut k = by_author_prefix(identity);
    k.extend(date8(at));
    k.extend(clean(ws));
    k.push(0);
    k.extend(clean(uuid));
    k.push(0);
    k.extend(clean(hash));
    k
}

/// (date) index entry.
pub fn by_date(at: DateTime<Utc>, ws: &str, uuid: &str, hash: &str) -> Vec<u8> {
    let mut k = vec![BY_DATE];
    k.extend(date8(at));
    k.extend(clean(ws));
    k.push(0);
    k.extend(clean(uuid));
    k.push(0);
    k.extend(clean(hash));
    k
}

/// (hash) index entry.
pub fn by_hash(hash: &str, ws: &str, uuid: &str) -> Vec<u8> {
    let mut k = vec![BY_HASH];
    k.extend(clean(hash));
    k.extend(clean(ws));
    k.push(0);
    k.extend(clean(uuid));
    k
}

/// Where a commit lives: workspace, repository uuid, hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CommitAddress {
    /// Workspace name.
    pub workspace: String,
    /// Repository uuid.
    pub repo_uuid: String,
    /// Commit hash.
    pub hash: String,
}

fn split_ws_uuid_hash(rest: &[u8]) -> Option<CommitAddress> {
    let mut parts = rest.splitn(3, |b| *b == 0);
    let ws = std::str::from_utf8(parts.next()?).ok()?;
    let uuid = std::str::from_utf8(parts.next()?).ok()?;
    let hash = std::str::from_utf8(parts.next()?).ok()?;
    Some(CommitAddress {
        workspace: ws.to_owned(),
        repo_uuid: uuid.to_owned(),
        hash: hash.to_owned(),
    })
}

/// Decodes a `t` (by date) index key.
pub fn parse_by_date(key: &[u8]) -> Option<(DateTime<Utc>, CommitAddress)> {
    let at = from_date8(key.get(1..)?)?;
    Some((at, split_ws_uuid_hash(key.get(9..)?)?))
}

/// Decodes an `a` (by author) index key whose identity prefix has length `prefix_len`.
pub fn parse_by_author(key: &[u8], prefix_len: usize) -> Option<(DateTime<Utc>, CommitAddress)> {
    let at = from_date8(key.get(prefix_len..)?)?;
    Some((at, split_ws_uuid_hash(key.get(prefix_len + 8..)?)?))
}

/// Decodes a `d` (by repository) index key whose repository prefix has length `prefix_len`.
pub fn parse_by_repo(key: &[u8], prefix_len: usize) -> Option<(DateTime<Utc>, String)> {
    let at = from_date8(key.get(prefix_len..)?)?;
    let hash = std::str::from_utf8(key.get(prefix_len + 8..)?).ok()?;
    Some((at, hash.to_owned()))
}

/// Decodes an `h` (by hash) index key.
pub fn parse_by_hash(key: &[u8]) -> Option<CommitAddress> {
    let hash = std::str::from_utf8(key.get(1..1 + HASH_LEN)?).ok()?;
    let rest = key.get(1 + HASH_LEN..)?;
    let mut parts = rest.splitn(2, |b| *b == 0);
    let ws = std::str::from_utf8(parts.next()?).ok()?;
    let uuid = std::str::from_utf8(parts.next()?).ok()?;
    Some(CommitAddress {
        workspace: ws.to_owned(),
        repo_uuid: uuid.to_owned(),
        hash: hash.to_owned(),
    })
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
    fn index_keys_round_trip() {
        let h = "0123456789abcdef0123456789abcdef01234567";
        let at = Utc.timestamp_millis_opt(1_700_000_000_000).unwrap();
        let (t, addr) = parse_by_date(&by_date(at, "acme", "{u}", h)).unwrap();
        assert_eq!(
            (
                t,
                addr.workspace.as_str(),
                addr.repo_uuid.as_str(),
                addr.hash.as_str()
            ),
            (at, "acme", "{u}", h)
        );
        let p = by_author_prefix("jane@x");
        let (t, addr) =
            parse_by_author(&by_author("jane@x", at, "acme", "{u}", h), p.len()).unwrap();
        assert_eq!((t, addr.hash.as_str()), (at, h));
        let p = by_repo_prefix("acme", "{u}");
        assert_eq!(
            parse_by_repo(&by_repo("acme", "{u}", at, h), p.len()),
            Some((at, h.to_owned()))
        );
        assert_eq!(
            parse_by_hash(&by_hash(h, "acme", "{u}")).unwrap().repo_uuid,
            "{u}"
        );
    }
}
