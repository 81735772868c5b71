//! Untrusted input never panics (issue 14): property tests over everything
//! bbcrawl decodes from outside — API pages and their dates, error bodies,
//! the configuration, stored values and keys, the schema-1 records the
//! migration reads. Arbitrary bytes give an error or a value, never a
//! panic; values bbcrawl writes read back as they were.
//!
//! CI runs proptest's default 256 cases per property. The long mode runs
//! more: `PROPTEST_CASES=100000 cargo test --lib proptests` (README).

use chrono::{DateTime, FixedOffset, Offset, TimeZone, Utc};
use proptest::prelude::*;

use crate::bitbucket::models::{dates, Commit, ErrorBody, Page, Repository};
use crate::record::{parse_raw, Author, Committer, RepoState};
use crate::store::block::{decode_head, Columns};
use crate::store::{codec, keys, StoredCommit};

/// Any JSON value, nested a few levels, with the keys the API's objects
/// use among random ones (so decoders meet their fields with wrong types).
fn json() -> impl Strategy<Value = serde_json::Value> {
    let key = prop_oneof![
        Just("values".to_owned()),
        Just("next".to_owned()),
        Just("hash".to_owned()),
        Just("date".to_owned()),
        Just("message".to_owned()),
        Just("author".to_owned()),
        Just("committer".to_owned()),
        Just("raw".to_owned()),
        Just("user".to_owned()),
        Just("uuid".to_owned()),
        Just("parents".to_owned()),
        Just("slug".to_owned()),
        Just("mainbranch".to_owned()),
        Just("name".to_owned()),
        Just("error".to_owned()),
        Just("detail".to_owned()),
        ".{0,8}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".{0,24}".prop_map(serde_json::Value::from),
        // Dates in the shapes servers send, and near misses.
        "(19|20|99)[0-9]{2}-[01][0-9]-[0-3][0-9][T ][0-2][0-9]:[0-5][0-9]:[0-6][0-9](\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:?[0-9]{2})?"
            .prop_map(serde_json::Value::from),
        "[0-9a-fA-F]{38,42}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A date with any offset Bitbucket could send, to the nanosecond.
fn date() -> impl Strategy<Value = DateTime<FixedOffset>> {
    (
        -2_000_000_000_000i64..4_000_000_000_000,
        0u32..1_000_000,
        // Offsets in whole minutes, as git and Bitbucket keep them.
        -1_439i32..1_440,
    )
        .prop_map(|(ms, nanos, minutes)| {
            let offset = FixedOffset::east_opt(minutes * 60).unwrap_or(Utc.fix());
            let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
                + chrono::Duration::nanoseconds(i64::from(nanos));
            t.with_timezone(&offset)
        })
}

/// Optional text of any characters (controls, bidi, astral) or none.
fn text() -> impl Strategy<Value = Option<String>> {
    prop::option::of(".{0,40}")
}

/// A commit as the store keeps it, every field varied.
fn stored_commit() -> impl Strategy<Value = StoredCommit> {
    (
        "[0-9a-f]{40}",
        date(),
        (text(), text(), text(), text()),
        prop::option::of(text()),
        ".{0,200}",
        prop::collection::vec("[0-9a-f]{40}", 0..3),
        any::<bool>(),
        prop_oneof![Just("main".to_owned()), ".{1,12}"],
    )
        .prop_map(
            |(
                hash,
                date,
                (raw, uuid, account, display),
                committer,
                message,
                parents,
                reachable,
                branch,
            )| {
                let (name, email) = raw.as_deref().map(parse_raw).unwrap_or((None, None));
                let committer = committer.map(|raw| {
                    let (name, email) = raw.as_deref().map(parse_raw).unwrap_or((None, None));
                    Committer { raw, name, email }
                });
                StoredCommit {
                    branch,
                    hash,
                    date,
                    author: Author {
                        raw,
                        name,
                        email,
                        uuid,
                        account_id: account,
                        display_name: display,
                    },
                    committer,
                    message,
                    parents,
                    reachable,
                    unreachable_since: (!reachable)
                        .then(|| Utc.timestamp_millis_opt(1_700_000_000_123).unwrap()),
                }
            },
        )
}

proptest! {
    /// Dates: any text parses or is refused; every date bbcrawl prints
    /// parses back to the same instant and offset.
    #[test]
    fn dates_parse_or_refuse_and_printed_dates_round_trip(s in ".{0,40}", d in date()) {
        let _ = dates::parse(&s);
        let printed = crate::record::format_date(&d);
        let back = dates::parse(&printed);
        prop_assert_eq!(back, Some(d), "{}", printed);
        prop_assert_eq!(back.map(|b| b.offset().local_minus_utc()), Some(d.offset().local_minus_utc()));
    }

    /// API pages: any JSON decodes as a commit or repository page or is
    /// refused; a decoded commit always becomes a record.
    #[test]
    fn api_pages_decode_or_refuse_and_commits_become_records(v in json(), bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = serde_json::to_vec(&v).unwrap_or_default();
        for input in [&text[..], &bytes[..]] {
            if let Ok(page) = serde_json::from_slice::<Page<Commit>>(input) {
                for c in &page.values {
                    let r = c.to_record("ws", "repo", "{u}", "main");
                    let _ = r.author.identity();
                }
            }
            if let Ok(page) = serde_json::from_slice::<Page<Repository>>(input) {
                for r in &page.values {
                    let _ = (r.slug(), r.default_branch());
                }
            }
            if let Ok(e) = serde_json::from_slice::<ErrorBody>(input) {
                let _ = (e.error.granted_scopes(), e.error.required_scopes(), e.error.shas());
            }
        }
    }

    /// Error bodies: any body of any 4xx becomes an error whose message is
    /// at most 200 characters when the body is not Bitbucket's JSON.
    #[test]
    fn error_bodies_of_any_4xx_become_errors(status in 400u16..500, v in json(), bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let status = reqwest::StatusCode::from_u16(status).unwrap();
        let _ = crate::bitbucket::client::client_error(status, &serde_json::to_vec(&v).unwrap_or_default());
        let e = crate::bitbucket::client::client_error(status, &bytes);
        let _ = (e.exit_code(), e.is_fatal(), e.to_string());
    }

    /// Configuration: any file text and any value of the environment's
    /// keys give a configuration or a configuration error.
    #[test]
    fn any_configuration_loads_or_is_refused(
        file in prop_oneof![
            ".{0,200}",
            "(workspaces = \\[\"[a-z]{1,8}\"\\]\n)?(requests_per_hour = -?[0-9]{1,12}\n)?(listen = \".{0,20}\"\n)?(since = .{0,30}\n)?(\\[\\[credentials\\]\\]\naccess_token = \".{0,10}\"\n)?(min_free_disk_mb = -?[0-9]{1,12}\n)?(shard = \".{0,10}\"\n)?",
        ],
        key in prop_oneof![
            Just("BBCRAWL_REQUESTS_PER_HOUR"), Just("BBCRAWL_LISTEN"), Just("BBCRAWL_SINCE"),
            Just("BBCRAWL_WORKSPACES"), Just("BBCRAWL_API_URL"), Just("BBCRAWL_MIN_FREE_DISK_MB"),
            Just("BBCRAWL_INTERVAL_SECONDS"), Just("BITBUCKET_ACCESS_TOKEN"),
            Just("BBCRAWL_SHARD"), Just("BBCRAWL_SHARDS"), Just("BBCRAWL_SHARD_INDEX"),
        ],
        value in ".{0,30}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bbcrawl.toml");
        std::fs::write(&path, &file).unwrap();
        let overrides = crate::config::Overrides {
            config_path: Some(path),
            ..Default::default()
        };
        let env = |k: &str| (k == key).then(|| value.clone());
        let _ = crate::config::Config::load_with_env(&overrides, &env);
        let no_file = crate::config::Overrides::default();
        let _ = crate::config::Config::load_with_env(&no_file, &env);
    }

    /// Stored values and keys: arbitrary bytes decode or are refused.
    #[test]
    fn stored_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..2048), key in prop::collection::vec(any::<u8>(), 0..48)) {
        if let Ok(b) = Columns::decode(&bytes) {
            let repo = RepoState::new("ws", "{u}", "r", "ws/r", Utc::now());
            for i in 0..b.len() {
                let _ = b.commit(i);
                let mut out = Vec::new();
                let _ = b.write_json(i, &repo, &mut out);
            }
        }
        let _ = decode_head(&bytes);
        // Schema-1 records, which the migration reads.
        let _ = codec::decode(&key, &bytes);
        let _ = keys::Summary::decode(&key, &bytes);
        let _ = keys::Posting::decode_all(&key, &bytes);
        let _ = keys::parse_block(&key);
        let _ = keys::parse_postings(&key);
        let _ = keys::parse_by_repo(&key, &bytes);
        let _ = keys::split_by_author(&key, &bytes);
    }

    /// A block damaged anywhere decodes or is refused (never panics); an
    /// undamaged one round-trips.
    #[test]
    fn blocks_round_trip_and_damage_is_refused_or_survived(
        commits in prop::collection::vec(stored_commit(), 1..12),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut commits = commits;
        // Distinct hashes, as a block holds.
        for (i, c) in commits.iter_mut().enumerate() {
            c.hash.replace_range(0..4, &format!("{i:04x}"));
        }
        let bytes = Columns::of(&commits).unwrap().encode().unwrap();
        let b = Columns::decode(&bytes).unwrap();
        let repo = RepoState::new("ws", "{u}", "r", "ws/r", Utc::now());
        for (i, c) in commits.iter().enumerate() {
            prop_assert_eq!(&b.commit(i), c);
            let mut json = Vec::new();
            b.write_json(i, &repo, &mut json).unwrap();
            prop_assert_eq!(json, serde_json::to_vec(&c.clone().into_record(&repo)).unwrap());
        }
        let mut damaged = bytes.clone();
        let i = at.index(damaged.len());
        damaged[i] ^= flip;
        if let Ok(d) = Columns::decode(&damaged) {
            for k in 0..d.len() {
                let _ = d.commit(k);
            }
        }
    }

    /// Schema-1 records (what the migration reads) round-trip.
    #[test]
    fn schema_1_records_round_trip(c in stored_commit()) {
        let bytes = codec::encode(&c).unwrap();
        let hash = keys::parse_hash(&c.hash).unwrap();
        prop_assert_eq!(codec::decode(&hash, &bytes).unwrap(), c);
    }
}
