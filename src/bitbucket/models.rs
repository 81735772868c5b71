//! Payloads of the Bitbucket Cloud REST API 2.0, decoded leniently.
//!
//! Shared by the client (which decodes them) and the simulator (which
//! serialises them). Every field that Bitbucket may omit is an `Option` or
//! defaults to empty, unknown fields are ignored, and dates keep the offset
//! Bitbucket sent. See `shared/bitbucket-api.md` for the facts behind each
//! choice.

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

use crate::record::{parse_raw, Author, CommitRecord, Committer};

/// One page of a paged collection. Only `values` and `next` are guaranteed;
/// commit pages carry nothing else ("iterator" pagination).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items of this page.
    #[serde(default = "Vec::new")]
    pub values: Vec<T>,
    /// Absolute URL of the next page; absent on the last page. Opaque:
    /// follow it as given, never build one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Page size the server used (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pagelen: Option<u32>,
    /// Total number of items; only some collections send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// 1-based page number; only some collections send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u64>,
}

/// A repository as listed by `GET /repositories/{workspace}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repository {
    /// Braced, immutable identity (`{6f0b…}`): survives renames.
    pub uuid: String,
    /// URL slug; newer schema copies omit it, see [`Repository::slug`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// `workspace/slug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<String>,
    /// Human name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The default branch; missing or `null` means the repository has no commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mainbranch: Option<Branch>,
    /// Last update time (moves on pushes in practice; not documented).
    /// Only a hint for the change gate: one that does not parse is `None`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "dates::optional"
    )]
    pub updated_on: Option<DateTime<FixedOffset>>,
    /// Whether the repository is private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_private: Option<bool>,
}

impl Repository {
    /// The slug, falling back to the part of `full_name` after `/` when the
    /// payload lacks `slug`.
    pub fn slug(&self) -> Option<&str> {
        match &self.slug {
            Some(s) if !s.is_empty() => Some(s.as_str()),
            _ => self
                .full_name
                .as_deref()
                .and_then(|f| f.split_once('/'))
                .map(|(_, s)| s)
                .filter(|s| !s.is_empty()),
        }
    }

    /// Name of the default branch, if the repository has one.
    pub fn default_branch(&self) -> Option<&str> {
        self.mainbranch
            .as_ref()
            .map(|b| b.name.as_str())
            .filter(|n| !n.is_empty())
    }
}

/// A branch reference (`{"name":"main","type":"branch"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    /// Branch name; may contain `/`.
    pub name: String,
}

/// A commit as listed by `GET …/commits/{revision}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Commit {
    /// 40 hex digits.
    pub hash: String,
    /// ISO 8601 with the offset Bitbucket sent (usually `+00:00`).
    #[serde(deserialize_with = "dates::required")]
    pub date: DateTime<FixedOffset>,
    /// The author; `user` is absent when the e-mail matches no account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Actor>,
    /// The committer; newer than `author` in the API and may be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<Actor>,
    /// Full commit message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Parent commits (0, 1 or more).
    #[serde(default)]
    pub parents: Vec<CommitRef>,
}

/// An author or committer: the raw `Name <email>` and, when Bitbucket
/// matched it to an account, that account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    /// `Name <email>` as recorded in git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
    /// The matching Bitbucket account, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
}

/// A Bitbucket account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Braced account uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Atlassian account id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    /// Nickname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
}

/// A reference to a commit (`parents` items).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRef {
    /// 40 hex digits.
    pub hash: String,
}

/// Bitbucket's error envelope: `{"type":"error","error":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ErrorDetail,
}

/// The inner error object. `detail` is documented as a string but is an
/// object for scope errors, so it is kept as raw JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Always present.
    #[serde(default)]
    pub message: String,
    /// A string, or an object such as `{"granted":[…],"required":[…]}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
    /// Extra data, e.g. `{"shas":[…]}` for unknown commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    /// Per-field errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<serde_json::Value>,
    /// Error id for support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl ErrorDetail {
    /// Scopes the credential has, when a 403 says so.
    pub fn granted_scopes(&self) -> Option<Vec<String>> {
        self.scope_list("granted")
    }

    /// Scopes the endpoint needs, when a 403 says so.
    pub fn required_scopes(&self) -> Option<Vec<String>> {
        self.scope_list("required")
    }

    /// Unknown revisions Bitbucket names in `data.shas` (404s).
    pub fn shas(&self) -> Option<Vec<String>> {
        str_list(self.data.as_ref(), "shas")
    }

    fn scope_list(&self, key: &str) -> Option<Vec<String>> {
        str_list(self.detail.as_ref(), key)
    }
}

/// The strings of the array under `key` of a JSON object, if there is one.
fn str_list(v: Option<&serde_json::Value>, key: &str) -> Option<Vec<String>> {
    let list = v?.get(key)?.as_array()?;
    Some(
        list.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    )
}

impl Actor {
    /// The author record (SPEC section 4) of an optional API actor.
    pub fn to_author(actor: Option<&Actor>) -> Author {
        let raw = actor.and_then(|a| a.raw.clone());
        let (name, email) = raw.as_deref().map(parse_raw).unwrap_or((None, None));
        let user = actor.and_then(|a| a.user.as_ref());
        Author {
            raw,
            name,
            email,
            uuid: user.and_then(|u| u.uuid.clone()),
            account_id: user.and_then(|u| u.account_id.clone()),
            display_name: user.and_then(|u| u.display_name.clone()),
        }
    }

    /// The committer record; `None` when Bitbucket sent no committer.
    pub fn to_committer(actor: Option<&Actor>) -> Option<Committer> {
        let raw = actor?.raw.clone();
        let (name, email) = raw.as_deref().map(parse_raw).unwrap_or((None, None));
        Some(Committer { raw, name, email })
    }
}

impl Commit {
    /// The stored record of this commit, found on `branch` of a repository.
    pub fn to_record(
        &self,
        workspace: &str,
        repo: &str,
        repo_uuid: &str,
        branch: &str,
    ) -> CommitRecord {
        CommitRecord {
            workspace: workspace.to_owned(),
            repo: repo.to_owned(),
            repo_uuid: repo_uuid.to_owned(),
            branch: branch.to_owned(),
            hash: self.hash.to_ascii_lowercase(),
            date: self.date,
            author: Actor::to_author(self.author.as_ref()),
            committer: Actor::to_committer(self.committer.as_ref()),
            message: self.message.clone().unwrap_or_default(),
            parents: self
                .parents
                .iter()
                .map(|p| p.hash.to_ascii_lowercase())
                .collect(),
            reachable: true,
        }
    }
}

/// Dates as Bitbucket sends them (RFC 3339 with an offset), and, leniently,
/// as other implementations of the API have been seen to: no offset
/// (`2024-05-01T10:00:00.123456`, taken as UTC, which is what such servers
/// mean), a space for the `T`, or an offset without a colon (`+0000`).
pub mod dates {
    use chrono::{DateTime, FixedOffset, NaiveDateTime};
    use serde::{Deserialize, Deserializer};

    /// Parses one date; `None` when it is none of the accepted forms.
    pub fn parse(s: &str) -> Option<DateTime<FixedOffset>> {
        let s = s.trim();
        if let Ok(d) = DateTime::parse_from_rfc3339(s) {
            return Some(d);
        }
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
            if let Ok(d) = DateTime::parse_from_str(s, fmt) {
                return Some(d);
            }
        }
        for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
            if let Ok(n) = NaiveDateTime::parse_from_str(s, fmt) {
                return Some(n.and_utc().fixed_offset());
            }
        }
        None
    }

    /// A date that must be there and parse.
    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<FixedOffset>, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DateTime<FixedOffset>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an ISO 8601 date")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
                parse(s).ok_or_else(|| E::custom(format!("not a date: {s:?}")))
            }
        }
        d.deserialize_str(Visitor)
    }

    /// A date that may be missing, `null` or unreadable (then `None`).
    pub fn optional<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<DateTime<FixedOffset>>, D::Error> {
        Ok(Option::<serde_json::Value>::deserialize(d)?.and_then(|v| v.as_str().and_then(parse)))
    }
}

/// The keep-only `fields=` list for repository listings: everything the
/// crawler reads, and `next` so the page keeps its link.
pub const REPOSITORY_FIELDS: &str = "values.uuid,values.slug,values.full_name,values.name,values.mainbranch.name,values.updated_on,values.is_private,next";

/// `fields` for one repository (`GET /repositories/{workspace}/{slug}`):
/// the same fields as a listing entry.
pub const REPOSITORY_FIELDS_ONE: &str =
    "uuid,slug,full_name,name,mainbranch.name,updated_on,is_private";

/// The keep-only `fields=` list for commit pages.
pub const COMMIT_FIELDS: &str = "values.hash,values.date,values.author.raw,values.author.user.display_name,values.author.user.uuid,values.author.user.account_id,values.committer.raw,values.committer.user.display_name,values.committer.user.uuid,values.committer.user.account_id,values.message,values.parents.hash,next";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_commit_without_user_or_committer() {
        let json = r#"{"type":"commit","hash":"0123456789abcdef0123456789abcdef01234567",
            "date":"2024-03-01T01:00:00+05:30","author":{"type":"author","raw":"A <a@x>"},
            "message":"m","parents":[],"links":{"self":{"href":"x"}},"extra":1}"#;
        let c: Commit = serde_json::from_str(json).unwrap();
        assert_eq!(c.author.unwrap().user, None);
        assert!(c.committer.is_none());
        assert_eq!(c.date.offset().local_minus_utc(), 5 * 3600 + 1800);
    }

    #[test]
    fn dates_parse_in_the_forms_servers_send() {
        let utc = |s: &str| dates::parse(s).map(|d| (d.to_rfc3339(), d.offset().local_minus_utc()));
        assert_eq!(
            utc("2024-05-01T10:00:00+00:00"),
            Some(("2024-05-01T10:00:00+00:00".into(), 0))
        );
        assert_eq!(
            utc("2024-05-01T10:00:00Z"),
            Some(("2024-05-01T10:00:00+00:00".into(), 0))
        );
        assert_eq!(
            utc("2024-05-01T15:30:00+05:30"),
            Some(("2024-05-01T15:30:00+05:30".into(), 19_800))
        );
        assert_eq!(
            utc("2024-05-01T10:00:00.123456"),
            Some(("2024-05-01T10:00:00.123456+00:00".into(), 0))
        );
        assert_eq!(
            utc("2024-05-01 10:00:00"),
            Some(("2024-05-01T10:00:00+00:00".into(), 0))
        );
        assert_eq!(
            utc("2024-05-01T10:00:00-0700"),
            Some(("2024-05-01T10:00:00-07:00".into(), -25_200))
        );
        // Fractions finer than a millisecond are kept to the nanosecond.
        assert_eq!(
            utc("2024-05-01T11:37:07.123456789+02:00"),
            Some(("2024-05-01T11:37:07.123456789+02:00".into(), 7_200))
        );
        assert_eq!(utc("yesterday"), None);
        assert_eq!(utc(""), None);

        // A commit needs its date; a repository's updated_on is only a hint.
        let c =
            r#"{"hash":"0123456789abcdef0123456789abcdef01234567","date":"2024-05-01T10:00:00"}"#;
        assert!(serde_json::from_str::<Commit>(c).is_ok());
        let bad = r#"{"hash":"0123456789abcdef0123456789abcdef01234567","date":"soon"}"#;
        assert!(serde_json::from_str::<Commit>(bad).is_err());
        for updated in [r#""garbage""#, "null", "17"] {
            let r = format!(r#"{{"uuid":"{{u}}","updated_on":{updated}}}"#);
            let r: Repository = serde_json::from_str(&r).unwrap();
            assert_eq!(r.updated_on, None);
        }
        let r: Repository = serde_json::from_str(r#"{"uuid":"{u}"}"#).unwrap();
        assert_eq!(r.updated_on, None);
    }

    #[test]
    fn decodes_error_detail_as_string_or_object() {
        let s: ErrorBody =
            serde_json::from_str(r#"{"type":"error","error":{"message":"x","detail":"text"}}"#)
                .unwrap();
        assert_eq!(s.error.granted_scopes(), None);
        let o: ErrorBody = serde_json::from_str(
            r#"{"type":"error","error":{"message":"x","detail":{"granted":["account"],"required":["repository"]}}}"#,
        )
        .unwrap();
        assert_eq!(o.error.granted_scopes().unwrap(), vec!["account"]);
        assert_eq!(o.error.required_scopes().unwrap(), vec!["repository"]);
    }

    #[test]
    fn slug_falls_back_to_full_name() {
        let r: Repository =
            serde_json::from_str(r#"{"uuid":"{u}","full_name":"acme/pay","mainbranch":null}"#)
                .unwrap();
        assert_eq!(r.slug(), Some("pay"));
        assert_eq!(r.default_branch(), None);
    }
}
