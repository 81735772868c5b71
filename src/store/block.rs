//! A block: the commits of one stored page (up to 100, of one repository,
//! in walk order), kept as one sled value. Chosen by `benches/codec.rs`
//! (BENCHMARKS.md, "Block codecs"): the `columns` layout under `lz4_flex`'s
//! block format, pure Rust, about 61 bytes per commit on the demo world
//! against 245 for the schema-1 record, at 1.8M commits/s encoded and
//! 1.2M/s decoded.
//!
//! Layout: one format byte ([`FORMAT`]), then the uncompressed length as a
//! little-endian u32 and the LZ4 block of one postcard [`Columns`] struct:
//! every hash first, then the reachable flags (so the writer's per-repository
//! hash index reads only those two columns), then the rest, like fields
//! together: branches and authors as per-block tables with an index per
//! commit, dates as deltas, parents as positions in the block where the
//! parent is in it, messages last.

use chrono::{DateTime, FixedOffset, Offset, TimeDelta, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use std::borrow::Cow;
use std::collections::HashMap;

use super::keys::{hash_hex, parse_hash, Hash};
use super::StoredCommit;
use crate::record::{parse_raw, Author, Committer, RepoState};

/// The format byte of a block written by this build.
pub const FORMAT: u8 = 1;

/// A decompressed block larger than this is damage, not data (100 commits
/// with 64 KiB messages are well under it).
const MAX_RAW_BYTES: usize = 64 << 20;

/// Nanoseconds in a millisecond.
const NANOS_PER_MS: u32 = 1_000_000;

/// Why a block cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// A hash that is not 40 hex digits.
    #[error("commit hash {0:?} is not 40 hex digits")]
    BadHash(String),
    /// postcard failed.
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
    /// LZ4 failed.
    #[error("LZ4: {0}")]
    Lz4(String),
    /// An unknown format byte, a length out of range, columns of unequal
    /// lengths or an index out of its table.
    #[error("{0}")]
    Malformed(String),
}

/// An author as a block keeps one (names come from `raw`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct BlockAuthor {
    raw: Option<String>,
    uuid: Option<String>,
    account_id: Option<String>,
    display_name: Option<String>,
}

/// Most commits are committed by their author.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum BlockCommitter {
    None,
    SameAsAuthor,
    Raw(Option<String>),
}

/// A parent: a position in this block where it is there, else its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Parent {
    InBlock(u32),
    Hash(Hash),
}

/// The two columns the writer's hash index needs, read without the rest.
#[derive(Deserialize)]
struct Head {
    hashes: Vec<Hash>,
    reachable: Vec<bool>,
}

/// A block, decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Columns {
    hashes: Vec<Hash>,
    reachable: Vec<bool>,
    unreachable_since_ms: Vec<Option<i64>>,
    branches: Vec<String>,
    branch: Vec<u32>,
    /// The first commit's milliseconds, then each minus the previous (on
    /// disk); absolute once decoded.
    date_ms: Vec<i64>,
    offsets_s: Vec<i32>,
    /// Nanoseconds past the millisecond (almost always 0).
    sub_ms_nanos: Vec<u32>,
    authors: Vec<BlockAuthor>,
    author: Vec<u32>,
    committer: Vec<BlockCommitter>,
    parents: Vec<Vec<Parent>>,
    messages: Vec<String>,
    /// Name and e-mail parsed from each author's and committer's raw
    /// identity, once per block (not stored).
    #[serde(skip)]
    parsed: HashMap<String, (Option<String>, Option<String>)>,
}

/// Position of `x` in `table`, adding it if new.
fn intern<T: PartialEq>(table: &mut Vec<T>, x: T) -> u32 {
    match table.iter().position(|t| *t == x) {
        Some(i) => i as u32,
        None => {
            table.push(x);
            (table.len() - 1) as u32
        }
    }
}

impl Columns {
    /// The columns of `commits`, in their order.
    pub fn of(commits: &[StoredCommit]) -> Result<Columns, BlockError> {
        let hashes = commits
            .iter()
            .map(|c| parse_hash(&c.hash).ok_or_else(|| BlockError::BadHash(c.hash.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut b = Columns {
            reachable: Vec::with_capacity(commits.len()),
            unreachable_since_ms: Vec::with_capacity(commits.len()),
            branches: Vec::new(),
            branch: Vec::with_capacity(commits.len()),
            date_ms: Vec::with_capacity(commits.len()),
            offsets_s: Vec::with_capacity(commits.len()),
            sub_ms_nanos: Vec::with_capacity(commits.len()),
            authors: Vec::new(),
            author: Vec::with_capacity(commits.len()),
            committer: Vec::with_capacity(commits.len()),
            parents: Vec::with_capacity(commits.len()),
            messages: Vec::with_capacity(commits.len()),
            hashes: Vec::new(),
            parsed: HashMap::new(),
        };
        for c in commits {
            b.reachable.push(c.reachable);
            b.unreachable_since_ms
                .push(c.unreachable_since.map(|t| t.timestamp_millis()));
            let branch = intern(&mut b.branches, c.branch.clone());
            b.branch.push(branch);
            b.date_ms.push(c.date.timestamp_millis());
            b.offsets_s.push(c.date.offset().local_minus_utc());
            b.sub_ms_nanos
                .push(c.date.timestamp_subsec_nanos() % NANOS_PER_MS);
            let author = BlockAuthor {
                raw: c.author.raw.clone(),
                uuid: c.author.uuid.clone(),
                account_id: c.author.account_id.clone(),
                display_name: c.author.display_name.clone(),
            };
            let a = intern(&mut b.authors, author);
            b.author.push(a);
            b.committer.push(match &c.committer {
                None => BlockCommitter::None,
                Some(x) if x.raw.is_some() && x.raw == c.author.raw => BlockCommitter::SameAsAuthor,
                Some(x) => BlockCommitter::Raw(x.raw.clone()),
            });
            let parents = c
                .parents
                .iter()
                .map(|p| {
                    let h = parse_hash(p).ok_or_else(|| BlockError::BadHash(p.clone()))?;
                    Ok(match hashes.iter().position(|x| *x == h) {
                        Some(i) => Parent::InBlock(i as u32),
                        None => Parent::Hash(h),
                    })
                })
                .collect::<Result<Vec<_>, BlockError>>()?;
            b.parents.push(parents);
            b.messages.push(c.message.clone());
        }
        b.hashes = hashes;
        Ok(b)
    }

    /// The stored bytes.
    pub fn encode(&self) -> Result<Vec<u8>, BlockError> {
        let mut disk = self.clone();
        let mut prev = 0i64;
        for ms in &mut disk.date_ms {
            let abs = *ms;
            *ms = abs.wrapping_sub(prev);
            prev = abs;
        }
        let raw = postcard::to_stdvec(&disk)?;
        let mut out = Vec::with_capacity(1 + raw.len() / 2);
        out.push(FORMAT);
        out.extend(lz4_flex::compress_prepend_size(&raw));
        Ok(out)
    }

    /// Decodes stored bytes.
    pub fn decode(bytes: &[u8]) -> Result<Columns, BlockError> {
        let raw = decompress(bytes)?;
        let mut b: Columns = postcard::from_bytes(&raw)?;
        let mut acc = 0i64;
        for ms in &mut b.date_ms {
            acc = acc.wrapping_add(*ms);
            *ms = acc;
        }
        b.check()?;
        let raws =
            b.authors
                .iter()
                .filter_map(|a| a.raw.as_deref())
                .chain(b.committer.iter().filter_map(|c| match c {
                    BlockCommitter::Raw(Some(r)) => Some(r.as_str()),
                    _ => None,
                }));
        let mut parsed = HashMap::new();
        for raw in raws {
            if !parsed.contains_key(raw) {
                parsed.insert(raw.to_owned(), parse_raw(raw));
            }
        }
        b.parsed = parsed;
        Ok(b)
    }

    /// Name and e-mail of a raw identity.
    fn names(&self, raw: Option<&str>) -> (Option<String>, Option<String>) {
        match raw {
            None => (None, None),
            Some(r) => match self.parsed.get(r) {
                Some(p) => p.clone(),
                None => parse_raw(r),
            },
        }
    }

    fn check(&self) -> Result<(), BlockError> {
        let n = self.hashes.len();
        let lens = [
            self.reachable.len(),
            self.unreachable_since_ms.len(),
            self.branch.len(),
            self.date_ms.len(),
            self.offsets_s.len(),
            self.sub_ms_nanos.len(),
            self.author.len(),
            self.committer.len(),
            self.parents.len(),
            self.messages.len(),
        ];
        if lens.iter().any(|l| *l != n) {
            return Err(BlockError::Malformed("columns of unequal lengths".into()));
        }
        let bad_index = self
            .branch
            .iter()
            .any(|i| *i as usize >= self.branches.len())
            || self
                .author
                .iter()
                .any(|i| *i as usize >= self.authors.len())
            || self
                .parents
                .iter()
                .flatten()
                .any(|p| matches!(p, Parent::InBlock(i) if *i as usize >= n))
            || self.sub_ms_nanos.iter().any(|s| *s >= NANOS_PER_MS)
            || self
                .offsets_s
                .iter()
                .any(|o| FixedOffset::east_opt(*o).is_none());
        if bad_index {
            return Err(BlockError::Malformed("an index out of its table".into()));
        }
        Ok(())
    }

    /// Commits in the block.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Commit `i`'s hash.
    pub fn hash(&self, i: usize) -> &Hash {
        &self.hashes[i]
    }

    /// Every hash, in slot order.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Commit `i`'s instant in whole milliseconds (rounded down).
    pub fn date_ms(&self, i: usize) -> i64 {
        self.date_ms[i]
    }

    /// Whether commit `i` is reachable.
    pub fn reachable(&self, i: usize) -> bool {
        self.reachable[i]
    }

    /// Marks commit `i` reachable (or unreachable since `at`).
    pub fn set_reachable(&mut self, i: usize, reachable: bool, at: Option<DateTime<Utc>>) {
        self.reachable[i] = reachable;
        self.unreachable_since_ms[i] = if reachable {
            None
        } else {
            at.map(|t| t.timestamp_millis())
        };
    }

    /// Commit `i`'s parents' hashes.
    pub fn parent_hashes(&self, i: usize) -> impl Iterator<Item = Hash> + '_ {
        self.parents[i].iter().map(|p| match p {
            Parent::InBlock(j) => self.hashes[*j as usize],
            Parent::Hash(h) => *h,
        })
    }

    /// Commit `i`'s author.
    pub fn author(&self, i: usize) -> Author {
        let a = &self.authors[self.author[i] as usize];
        let (name, email) = self.names(a.raw.as_deref());
        Author {
            raw: a.raw.clone(),
            name,
            email,
            uuid: a.uuid.clone(),
            account_id: a.account_id.clone(),
            display_name: a.display_name.clone(),
        }
    }

    /// Every commit, in slot order, moving the messages out.
    pub fn into_commits(mut self) -> Vec<StoredCommit> {
        let messages = std::mem::take(&mut self.messages);
        messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| self.build(i, m))
            .collect()
    }

    /// Commit `i`.
    pub fn commit(&self, i: usize) -> StoredCommit {
        self.build(i, self.messages[i].clone())
    }

    /// Commit `i`'s date, with the offset Bitbucket sent.
    fn date(&self, i: usize) -> DateTime<FixedOffset> {
        let offset = FixedOffset::east_opt(self.offsets_s[i]).unwrap_or_else(|| Utc.fix());
        offset
            .timestamp_millis_opt(self.date_ms[i])
            .single()
            .and_then(|d| {
                d.checked_add_signed(TimeDelta::nanoseconds(i64::from(self.sub_ms_nanos[i])))
            })
            .unwrap_or_else(|| DateTime::<Utc>::MIN_UTC.with_timezone(&offset))
    }

    /// Name and e-mail of a raw identity, borrowed from the block's table
    /// of parsed identities where it is there.
    fn names_ref<'a>(
        &'a self,
        raw: Option<&'a str>,
    ) -> (Option<Cow<'a, str>>, Option<Cow<'a, str>>) {
        match raw {
            None => (None, None),
            Some(r) => match self.parsed.get(r) {
                Some((n, e)) => (
                    n.as_deref().map(Cow::Borrowed),
                    e.as_deref().map(Cow::Borrowed),
                ),
                None => {
                    let (n, e) = parse_raw(r);
                    (n.map(Cow::Owned), e.map(Cow::Owned))
                }
            },
        }
    }

    /// Appends commit `i` as repository `repo`'s JSON record (SPEC section
    /// 4): the bytes `serde_json` writes for
    /// `self.commit(i).into_record(repo)`, without building either (no
    /// allocation but the date's text). `export` prints these.
    pub fn write_json(
        &self,
        i: usize,
        repo: &RepoState,
        out: &mut Vec<u8>,
    ) -> Result<(), serde_json::Error> {
        let v = self.view(i);
        let view = RecordView {
            workspace: &repo.workspace,
            repo: &repo.slug,
            repo_uuid: &repo.uuid,
            branch: v.branch,
            hash: HexView(*v.hash),
            date: crate::record::format_date(&v.date),
            author: AuthorView {
                raw: v.author.raw,
                name: v.author.name,
                email: v.author.email,
                uuid: v.author_uuid,
                account_id: v.author_account_id,
                display_name: v.author_display_name,
            },
            committer: v.committer,
            message: v.message,
            parents: ParentsView(self, i),
            reachable: v.reachable,
        };
        serde_json::to_writer(out, &view)
    }

    /// Commit `i`'s fields borrowed from the block, as [`Columns::write_json`]
    /// prints them (the Parquet export's columns): nothing is built but
    /// the names parsed from a raw identity the block's table lacks.
    pub fn view(&self, i: usize) -> CommitView<'_> {
        let a = &self.authors[self.author[i] as usize];
        let (name, email) = self.names_ref(a.raw.as_deref());
        let committer_raw = match &self.committer[i] {
            BlockCommitter::None => None,
            BlockCommitter::SameAsAuthor => Some(a.raw.as_deref()),
            BlockCommitter::Raw(raw) => Some(raw.as_deref()),
        };
        let committer = committer_raw.map(|raw| {
            let (name, email) = self.names_ref(raw);
            IdentityView { raw, name, email }
        });
        CommitView {
            branch: &self.branches[self.branch[i] as usize],
            hash: &self.hashes[i],
            date: self.date(i),
            author: IdentityView {
                raw: a.raw.as_deref(),
                name,
                email,
            },
            author_uuid: a.uuid.as_deref(),
            author_account_id: a.account_id.as_deref(),
            author_display_name: a.display_name.as_deref(),
            committer,
            message: &self.messages[i],
            reachable: self.reachable[i],
        }
    }

    /// Commit `i` with its message.
    fn build(&self, i: usize, message: String) -> StoredCommit {
        let date = self.date(i);
        let author = self.author(i);
        let committer_raw = match &self.committer[i] {
            BlockCommitter::None => None,
            BlockCommitter::SameAsAuthor => Some(author.raw.clone()),
            BlockCommitter::Raw(raw) => Some(raw.clone()),
        };
        let committer = committer_raw.map(|raw| {
            let (name, email) = self.names(raw.as_deref());
            Committer { raw, name, email }
        });
        StoredCommit {
            branch: self.branches[self.branch[i] as usize].clone(),
            hash: hash_hex(&self.hashes[i]),
            date,
            author,
            committer,
            message,
            parents: self.parent_hashes(i).map(|h| hash_hex(&h)).collect(),
            reachable: self.reachable[i],
            unreachable_since: self.unreachable_since_ms[i]
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        }
    }
}

/// A commit's fields borrowed from its block ([`Columns::view`]); its
/// parents are [`Columns::parent_hashes`].
#[derive(Debug, Clone)]
pub struct CommitView<'a> {
    /// The default branch it was found on.
    pub branch: &'a str,
    /// Its hash.
    pub hash: &'a Hash,
    /// Its date, with the offset Bitbucket sent.
    pub date: DateTime<FixedOffset>,
    /// The author's raw identity and the name and e-mail parsed from it.
    pub author: IdentityView<'a>,
    /// The author's Bitbucket account uuid, when matched.
    pub author_uuid: Option<&'a str>,
    /// The author's Atlassian account id, when matched.
    pub author_account_id: Option<&'a str>,
    /// The author's Bitbucket display name, when matched.
    pub author_display_name: Option<&'a str>,
    /// The committer, when Bitbucket gave one.
    pub committer: Option<IdentityView<'a>>,
    /// The full message.
    pub message: &'a str,
    /// Whether it is reachable from the default branch.
    pub reachable: bool,
}

/// A raw git identity and the name and e-mail parsed from it (serialised
/// as [`Committer`] is).
#[derive(Debug, Clone, Serialize)]
pub struct IdentityView<'a> {
    /// `Name <email>` as recorded in git.
    pub raw: Option<&'a str>,
    /// The name parsed from `raw`.
    pub name: Option<Cow<'a, str>>,
    /// The e-mail parsed from `raw`.
    pub email: Option<Cow<'a, str>>,
}

/// [`crate::record::CommitRecord`]'s fields, in its order, borrowed from a
/// block (`Columns::write_json`).
#[derive(Serialize)]
struct RecordView<'a> {
    workspace: &'a str,
    repo: &'a str,
    repo_uuid: &'a str,
    branch: &'a str,
    hash: HexView,
    date: String,
    author: AuthorView<'a>,
    committer: Option<IdentityView<'a>>,
    message: &'a str,
    parents: ParentsView<'a>,
    reachable: bool,
}

/// [`Author`]'s fields, borrowed.
#[derive(Serialize)]
struct AuthorView<'a> {
    raw: Option<&'a str>,
    name: Option<Cow<'a, str>>,
    email: Option<Cow<'a, str>>,
    uuid: Option<&'a str>,
    account_id: Option<&'a str>,
    display_name: Option<&'a str>,
}

/// A hash as its 40 hex digits, written from the stack.
struct HexView(Hash);

impl Serialize for HexView {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 40];
        for (k, b) in self.0.iter().enumerate() {
            text[2 * k] = HEX[(b >> 4) as usize];
            text[2 * k + 1] = HEX[(b & 15) as usize];
        }
        // Hex digits are ASCII.
        s.serialize_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

/// Commit `.1`'s parents as a list of hex hashes.
struct ParentsView<'a>(&'a Columns, usize);

impl Serialize for ParentsView<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let parents = &self.0.parents[self.1];
        let mut seq = s.serialize_seq(Some(parents.len()))?;
        for h in self.0.parent_hashes(self.1) {
            seq.serialize_element(&HexView(h))?;
        }
        seq.end()
    }
}

fn decompress(bytes: &[u8]) -> Result<Vec<u8>, BlockError> {
    let (format, rest) = bytes
        .split_first()
        .ok_or_else(|| BlockError::Malformed("an empty block".into()))?;
    if *format != FORMAT {
        return Err(BlockError::Malformed(format!(
            "unknown block format {format}"
        )));
    }
    let (len, body) =
        lz4_flex::block::uncompressed_size(rest).map_err(|e| BlockError::Lz4(e.to_string()))?;
    if len > MAX_RAW_BYTES {
        return Err(BlockError::Malformed(format!("a block of {len} bytes")));
    }
    let mut raw = vec![0u8; len];
    let n = lz4_flex::block::decompress_into(body, &mut raw)
        .map_err(|e| BlockError::Lz4(e.to_string()))?;
    if n != len {
        return Err(BlockError::Malformed("a block shorter than it says".into()));
    }
    Ok(raw)
}

/// The hashes and reachable flags of a stored block, without the rest.
pub fn decode_head(bytes: &[u8]) -> Result<(Vec<Hash>, Vec<bool>), BlockError> {
    let raw = decompress(bytes)?;
    let (head, _): (Head, _) = postcard::take_from_bytes(&raw)?;
    if head.hashes.len() != head.reachable.len() {
        return Err(BlockError::Malformed("columns of unequal lengths".into()));
    }
    Ok((head.hashes, head.reachable))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(i: usize, date: &str, parent_in_block: bool) -> StoredCommit {
        let raw = Some(format!("Dev {} <dev{}@acme.io>", i % 3, i % 3));
        let (name, email) = raw.as_deref().map(parse_raw).unwrap_or((None, None));
        StoredCommit {
            branch: if i.is_multiple_of(5) {
                "master".into()
            } else {
                "main".into()
            },
            hash: format!("{:040x}", i + 1),
            date: DateTime::parse_from_rfc3339(date).unwrap(),
            author: Author {
                raw: raw.clone(),
                name: name.clone(),
                email: email.clone(),
                uuid: i.is_multiple_of(2).then(|| "{u}".to_owned()),
                account_id: None,
                display_name: i.is_multiple_of(2).then(|| "D".to_owned()),
            },
            committer: match i % 3 {
                0 => Some(Committer { raw, name, email }),
                1 => None,
                _ => Some(Committer {
                    raw: Some("Bot <bot@x>".into()),
                    name: Some("Bot".into()),
                    email: Some("bot@x".into()),
                }),
            },
            message: format!("change {i}\n\nbody"),
            parents: if parent_in_block {
                vec![format!("{:040x}", i + 2)]
            } else {
                vec![format!("{:040x}", 999_999), format!("{:040x}", i + 2)]
            },
            reachable: !i.is_multiple_of(4),
            unreachable_since: i
                .is_multiple_of(4)
                .then(|| Utc.timestamp_millis_opt(1_700_000_000_123).unwrap()),
        }
    }

    /// Dates of every kind a block keeps: sub-millisecond, pre-1970,
    /// offsets east and west and of half hours.
    const DATES: [&str; 5] = [
        "2024-05-01T11:37:07.123+02:00",
        "2024-05-01T11:37:07.123456+02:00",
        "1969-12-31T23:59:59.999999500+00:00",
        "2024-05-01T11:37:07-07:00",
        "2030-01-01T00:00:00+05:30",
    ];

    #[test]
    fn a_block_round_trips_every_field() {
        let dates = DATES;
        let commits: Vec<StoredCommit> = (0..50)
            .map(|i| commit(i, dates[i % dates.len()], i % 7 != 0))
            .collect();
        let bytes = Columns::of(&commits).unwrap().encode().unwrap();
        let b = Columns::decode(&bytes).unwrap();
        assert_eq!(b.len(), 50);
        for (i, c) in commits.iter().enumerate() {
            assert_eq!(&b.commit(i), c, "{i}");
            assert_eq!(b.commit(i).date.to_rfc3339(), c.date.to_rfc3339());
        }
        let (hashes, reachable) = decode_head(&bytes).unwrap();
        assert_eq!(hashes.len(), 50);
        assert_eq!(
            reachable,
            commits.iter().map(|c| c.reachable).collect::<Vec<_>>()
        );
    }

    /// `write_json` prints what serde prints for the built record, for
    /// every kind of field: committers absent, the author, another (or with
    /// no raw identity), parents in and out of the block, escapes, control
    /// characters and unicode in every text, sub-millisecond and pre-1970
    /// dates, unreachable commits, identities `parse_raw` splits oddly.
    #[test]
    fn write_json_prints_the_bytes_of_the_built_record() {
        let dates = DATES;
        let raws = [
            None,
            Some("Ünïcødé \"quoted\" <a\\b@x>"),
            Some("no email"),
            Some("<only@mail>"),
            Some("tab\there \u{1b}[31m <x@y>"),
        ];
        let mut commits: Vec<StoredCommit> = (0..60)
            .map(|i| commit(i, dates[i % dates.len()], i % 7 != 0))
            .collect();
        for (i, c) in commits.iter_mut().enumerate() {
            if i % 4 == 1 {
                let raw = raws[i % raws.len()].map(str::to_owned);
                let (name, email) = raw.as_deref().map(parse_raw).unwrap_or((None, None));
                c.author = Author {
                    raw,
                    name,
                    email,
                    uuid: Some("{ü}".into()),
                    account_id: Some("557058:\u{7f}".into()),
                    display_name: Some("\u{202e}evil".into()),
                };
            }
            if i % 6 == 5 {
                c.committer = Some(Committer {
                    raw: None,
                    name: None,
                    email: None,
                });
            }
            if i % 5 == 2 {
                c.message = format!("line\r\n\u{0}\u{1f}\\\"/ 日本 {i} \u{2028}");
            }
        }
        let block = Columns::decode(&Columns::of(&commits).unwrap().encode().unwrap()).unwrap();
        let mut repo = RepoState::new("ws \"x\"", "{r}", "slug/ü", "ws/slug", Utc::now());
        repo.id = 7;
        for i in 0..block.len() {
            let expected = serde_json::to_vec(&block.commit(i).into_record(&repo)).unwrap();
            let mut got = Vec::new();
            block.write_json(i, &repo, &mut got).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&expected),
                "commit {i}"
            );
        }
    }

    #[test]
    fn damaged_blocks_are_errors_not_panics() {
        let commits: Vec<StoredCommit> = (0..10)
            .map(|i| commit(i, "2024-05-01T11:37:07+00:00", true))
            .collect();
        let bytes = Columns::of(&commits).unwrap().encode().unwrap();
        assert!(Columns::decode(&[]).is_err());
        assert!(Columns::decode(&[9, 1, 2]).is_err());
        for cut in [1, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(Columns::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // A huge claimed length is refused before allocating it.
        let mut huge = bytes.clone();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Columns::decode(&huge).is_err());
        // Flipped bytes: an error or a block, never a panic.
        for i in 5..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x5a;
            if let Ok(c) = Columns::decode(&b) {
                for k in 0..c.len() {
                    let _ = c.commit(k);
                }
            }
        }
    }
}
