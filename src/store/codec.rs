//! The on-disk form of a commit: postcard (compact, length-prefixed
//! binary), with the date as milliseconds plus offset and hashes as bytes.
//! About a third of the JSON size; names and e-mails are re-parsed from
//! `raw` on read rather than stored twice.
//!
//! A date finer than a millisecond (some servers send microseconds) keeps
//! the rest as a postcard varint of nanoseconds (1 to 999 999) *after* the
//! struct, written only when non-zero. Records written before that existed
//! are the struct alone, so they decode exactly as they always did, and a
//! whole-millisecond date is stored byte for byte as before; an older
//! binary reading a newer store ignores the tail (postcard's `from_bytes`
//! does not look past the struct) and sees the date to the millisecond.

use chrono::{DateTime, FixedOffset, TimeDelta, TimeZone, Utc};
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
    /// The instant in whole milliseconds, rounded down (the rest, if any,
    /// follows the struct: see the module doc).
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
    /// Bytes after the record and its sub-millisecond tail.
    #[error("{0} unexpected bytes after the commit record")]
    Trailing(usize),
}

/// Nanoseconds in a millisecond: the sub-millisecond tail is below this.
const NANOS_PER_MS: u32 = 1_000_000;

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
    let mut bytes = postcard::to_stdvec(&disk)?;
    // `date_ms` rounds down (nanoseconds are never negative), so the rest
    // is the nanoseconds past the millisecond.
    let sub_ms = c.date.timestamp_subsec_nanos() % NANOS_PER_MS;
    if sub_ms != 0 {
        bytes = postcard::to_extend(&sub_ms, bytes)?;
    }
    Ok(bytes)
}

/// Decodes a commit stored under `hash`.
pub fn decode(hash: &[u8], bytes: &[u8]) -> Result<StoredCommit, CodecError> {
    let (d, tail): (DiskCommit, &[u8]) = postcard::take_from_bytes(bytes)?;
    let sub_ms = match tail {
        [] => 0,
        _ => {
            let (nanos, rest): (u32, &[u8]) = postcard::take_from_bytes(tail)?;
            if !rest.is_empty() {
                return Err(CodecError::Trailing(rest.len()));
            }
            nanos
        }
    };
    if sub_ms >= NANOS_PER_MS {
        return Err(CodecError::BadDate);
    }
    let offset = FixedOffset::east_opt(d.offset_s).ok_or(CodecError::BadDate)?;
    let date: DateTime<FixedOffset> = offset
        .timestamp_millis_opt(d.date_ms)
        .single()
        .and_then(|at| at.checked_add_signed(TimeDelta::nanoseconds(i64::from(sub_ms))))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Author, Committer};

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";
    const PARENT: &str = "89abcdef0123456789abcdef0123456789abcdef";

    /// A commit dated `date` (RFC 3339), committed by its author.
    fn commit(date: &str) -> StoredCommit {
        let raw = Some("Jane Doe <jane@acme.io>".to_owned());
        let (name, email) = (Some("Jane Doe".to_owned()), Some("jane@acme.io".to_owned()));
        StoredCommit {
            branch: "main".into(),
            hash: HASH.into(),
            date: DateTime::parse_from_rfc3339(date).unwrap(),
            author: Author {
                raw: raw.clone(),
                name: name.clone(),
                email: email.clone(),
                uuid: Some("{u}".into()),
                account_id: None,
                display_name: Some("Jane D.".into()),
            },
            committer: Some(Committer { raw, name, email }),
            message: "fix: x\n\nbody".into(),
            parents: vec![PARENT.into()],
            reachable: true,
            unreachable_since: None,
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// `commit("2024-05-01T11:37:07.123+02:00")` as the code before
    /// sub-millisecond tails wrote it (captured from that build).
    const OLD_FORMAT: &str = "046d61696ee6b89eb8e663c07001174a616e6520446f65203c6a616e654061636d652e696f3e01037b757d0001074a616e6520442e010c6669783a20780a0a626f64790189abcdef0123456789abcdef0123456789abcdef0100";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn hash() -> Hash {
        parse_hash(HASH).unwrap()
    }

    #[test]
    fn records_written_before_sub_millisecond_tails_decode_as_before() {
        let old = unhex(OLD_FORMAT);
        let c = decode(&hash(), &old).unwrap();
        assert_eq!(c, commit("2024-05-01T11:37:07.123+02:00"));
        assert_eq!(c.date.to_rfc3339(), "2024-05-01T11:37:07.123+02:00");
        // A whole-millisecond date is still written byte for byte as before.
        assert_eq!(hex(&encode(&c).unwrap()), OLD_FORMAT);
        let whole = commit("2024-05-01T12:00:00+00:00");
        let bytes = encode(&whole).unwrap();
        assert_eq!(
            postcard::take_from_bytes::<DiskCommit>(&bytes).unwrap().1,
            &[] as &[u8]
        );
        assert_eq!(
            decode(&hash(), &bytes).unwrap().date.to_rfc3339(),
            "2024-05-01T12:00:00+00:00"
        );
    }

    #[test]
    fn dates_finer_than_a_millisecond_keep_every_digit_and_the_offset() {
        for date in [
            "2024-05-01T11:37:07.123456+02:00",
            "2024-05-01T11:37:07.000001-07:00",
            "2024-05-01T11:37:07.123999999+05:30",
            "2024-05-01T11:37:07.000000001+00:00",
            // Before 1970 the milliseconds round down too: -1 ms + 999 500 ns.
            "1969-12-31T23:59:59.999999500+00:00",
        ] {
            let c = commit(date);
            let got = decode(&hash(), &encode(&c).unwrap()).unwrap();
            assert_eq!(got, c, "{date}");
            assert_eq!(got.date.to_rfc3339(), date, "{date}");
            assert_eq!(got.date.offset(), c.date.offset(), "{date}");
        }
    }

    #[test]
    fn the_sub_millisecond_tail_follows_the_old_record_unchanged() {
        let bytes = encode(&commit("2024-05-01T11:37:07.123456+02:00")).unwrap();
        // 456 000 ns as a postcard varint, after the very bytes of old.
        assert_eq!(hex(&bytes), format!("{OLD_FORMAT}c0ea1b"));
        // postcard's from_bytes, which the code before this used, stops at
        // the end of the struct: an older binary reads a newer store and
        // sees the date to the millisecond.
        let old_reader: DiskCommit = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(old_reader.date_ms, 1_714_556_227_123);
    }

    #[test]
    fn a_damaged_tail_is_an_error_not_a_wrong_date() {
        let old = unhex(OLD_FORMAT);
        let with = |tail: &[u8]| [old.as_slice(), tail].concat();
        // One million nanoseconds is a whole millisecond: never written.
        let too_big = postcard::to_stdvec(&NANOS_PER_MS).unwrap();
        assert!(matches!(
            decode(&hash(), &with(&too_big)),
            Err(CodecError::BadDate)
        ));
        assert!(matches!(
            decode(&hash(), &with(&[0x05, 0x07])),
            Err(CodecError::Trailing(1))
        ));
        // A varint cut short.
        assert!(matches!(
            decode(&hash(), &with(&[0x80])),
            Err(CodecError::Postcard(_))
        ));
    }
}
