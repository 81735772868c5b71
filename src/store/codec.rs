//! The on-disk form of a commit: postcard (compact, length-prefixed
//! binary), with the date as milliseconds plus offset and hashes as bytes.
//! About a third of the JSON size; names and e-mails are re-parsed from
//! `raw` on read rather than stored twice.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::keys::{hash_hex, parse_hash, Hash};
use super::StoredCommit;
use crate::record::{parse_raw, Author, Committer};

/// Most commits are committed by their author: then only a marker is kept.
#[derive(Serialize, Deserialize)]
enum DiskCommitter {
    None,
    SameAsAuthor,
    Raw(Option<String>),
}

#[derive(Serialize, Deserialize)]
struct DiskCommit {
    branch: String,
    date_ms: i64,
    offset_s: i32,
    author_raw: Option<String>,
    author_uuid: Option<String>,
    author_account_id: Option<String>,
    author_display_name: Option<String>,
    /// The committer: see [`DiskCommitter`].
    committer: DiskCommitter,
    message: String,
    parents: Vec<Hash>,
    reachable: bool,
    unreachable_since_ms: Option<i64>,
}

/// Why a commit cannot be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A hash that is not 40 hex digits.
    #[error("commit hash {0:?} is not 40 hex digits")]
    BadHash(String),
    /// postcard failed.
    #[error("{0}")]
    Postcard(#[from] postcard::Error),
    /// A date out of range.
    #[error("date out of range")]
    BadDate,
}

/// Encodes a commit (its hash lives in the key).
pub fn encode(c: &StoredCommit) -> Result<Vec<u8>, CodecError> {
    let parents = c
        .parents
        .iter()
        .map(|p| parse_hash(p).ok_or_else(|| CodecError::BadHash(p.clone())))
        .collect::<Result<Vec<_>, _>>()?;
    let disk = DiskCommit {
        branch: c.branch.clone(),
        date_ms: c.date.timestamp_millis(),
        offset_s: c.date.offset().local_minus_utc(),
        author_raw: c.author.raw.clone(),
        author_uuid: c.author.uuid.clone(),
        author_account_id: c.author.account_id.clone(),
        author_display_name: c.author.display_name.clone(),
        committer: match &c.committer {
            None => DiskCommitter::None,
            Some(x) if x.raw.is_some() && x.raw == c.author.raw => DiskCommitter::SameAsAuthor,
            Some(x) => DiskCommitter::Raw(x.raw.clone()),
        },
        message: c.message.clone(),
        parents,
        reachable: c.reachable,
        unreachable_since_ms: c.unreachable_since.map(|t| t.timestamp_millis()),
    };
    Ok(postcard::to_stdvec(&disk)?)
}

/// Decodes a commit stored under `hash`.
pub fn decode(hash: &[u8], bytes: &[u8]) -> Result<StoredCommit, CodecError> {
    let d: DiskCommit = postcard::from_bytes(bytes)?;
    let offset = FixedOffset::east_opt(d.offset_s).ok_or(CodecError::BadDate)?;
    let date: DateTime<FixedOffset> = offset
        .timestamp_millis_opt(d.date_ms)
        .single()
        .ok_or(CodecError::BadDate)?;
    let (name, email) = d
        .author_raw
        .as_deref()
        .map(parse_raw)
        .unwrap_or((None, None));
    let committer_raw = match d.committer {
        DiskCommitter::None => None,
        DiskCommitter::SameAsAuthor => Some(d.author_raw.clone()),
        DiskCommitter::Raw(raw) => Some(raw),
    };
    let committer = committer_raw.map(|raw| {
        let (name, email) = raw.as_deref().map(parse_raw).unwrap_or((None, None));
        Committer { raw, name, email }
    });
    Ok(StoredCommit {
        branch: d.branch,
        hash: hash_hex(hash),
        date,
        author: Author {
            raw: d.author_raw,
            name,
            email,
            uuid: d.author_uuid,
            account_id: d.author_account_id,
            display_name: d.author_display_name,
        },
        committer,
        message: d.message,
        parents: d.parents.iter().map(|p| hash_hex(p)).collect(),
        reachable: d.reachable,
        unreachable_since: d
            .unreachable_since_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
    })
}
