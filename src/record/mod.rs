//! The domain every layer passes around: the commit record of SPEC section
//! 4 (independent of the API payload it came from and of the store that
//! keeps it), a repository's state and events (`repo`), and what is known
//! of an author identity (`author`). The store only encodes these.

mod author;
mod repo;

pub use author::AuthorRecord;
pub use repo::{RepoEvent, RepoEventKind, RepoState, RepoStatus, RepoTotals, Walk};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// A commit author: the raw git identity and, when Bitbucket matched it to
/// an account, that account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    /// `Name <email>` as recorded in git.
    pub raw: Option<String>,
    /// Name parsed from `raw`.
    pub name: Option<String>,
    /// E-mail parsed from `raw`.
    pub email: Option<String>,
    /// Bitbucket account uuid, when matched.
    pub uuid: Option<String>,
    /// Atlassian account id, when matched.
    pub account_id: Option<String>,
    /// Bitbucket display name, when matched.
    pub display_name: Option<String>,
}

/// A committer: the raw git identity only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committer {
    /// `Name <email>` as recorded in git.
    pub raw: Option<String>,
    /// Name parsed from `raw`.
    pub name: Option<String>,
    /// E-mail parsed from `raw`.
    pub email: Option<String>,
}

/// One default-branch commit of one repository, as stored and printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Workspace name.
    pub workspace: String,
    /// Repository slug (the current one; renames are followed by uuid).
    pub repo: String,
    /// Braced repository uuid.
    pub repo_uuid: String,
    /// Default branch the commit was found on.
    pub branch: String,
    /// 40 hex digits.
    pub hash: String,
    /// Date with the offset Bitbucket sent (printed by [`format_date`]).
    #[serde(serialize_with = "serialize_date")]
    pub date: DateTime<FixedOffset>,
    /// The author.
    pub author: Author,
    /// The committer, when Bitbucket gave one.
    pub committer: Option<Committer>,
    /// Full message.
    pub message: String,
    /// Parent hashes.
    pub parents: Vec<String>,
    /// Whether the commit is still reachable from the default branch.
    pub reachable: bool,
}

/// Splits `Name <email>` into its parts; either may be missing.
pub fn parse_raw(raw: &str) -> (Option<String>, Option<String>) {
    let non_empty = |s: &str| {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_owned())
    };
    match (raw.find('<'), raw.rfind('>')) {
        (Some(open), Some(close)) if open < close => {
            (non_empty(&raw[..open]), non_empty(&raw[open + 1..close]))
        }
        _ => (non_empty(raw), None),
    }
}

impl Author {
    /// The author's identity for grouping: the account uuid when known,
    /// else the lower-cased e-mail, else the raw string.
    pub fn identity(&self) -> String {
        if let Some(u) = &self.uuid {
            return u.clone();
        }
        if let Some(e) = &self.email {
            return e.to_lowercase();
        }
        self.raw.clone().unwrap_or_default()
    }
}

/// A commit date as every output prints it: RFC 3339 with the offset
/// Bitbucket sent, `+00:00` included (never `Z`), and the fraction it sent
/// in groups of three digits (none for a whole second).
pub fn format_date(date: &DateTime<FixedOffset>) -> String {
    date.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
}

fn serialize_date<S: serde::Serializer>(
    date: &DateTime<FixedOffset>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_date(date))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_identities_are_split_leniently() {
        assert_eq!(
            parse_raw("Jane Doe <jane@acme.io>"),
            (Some("Jane Doe".into()), Some("jane@acme.io".into()))
        );
        assert_eq!(parse_raw("<ci@acme.io>"), (None, Some("ci@acme.io".into())));
        assert_eq!(parse_raw("just a name"), (Some("just a name".into()), None));
        assert_eq!(parse_raw(""), (None, None));
    }
}
