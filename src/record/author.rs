//! What is known of one author identity across commits: the names and
//! e-mails `--author` may match.

use serde::{Deserialize, Serialize};

use super::Author;

/// What the store knows of one author identity: the latest names it was
/// seen with, and every raw identity and display name (lower-cased) that
/// `--author` may match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuthorRecord {
    /// Account uuid, else lower-cased e-mail, else raw.
    pub identity: String,
    /// Latest `Name <email>`.
    pub raw: Option<String>,
    /// Latest name.
    pub name: Option<String>,
    /// Latest e-mail.
    pub email: Option<String>,
    /// Account uuid.
    pub uuid: Option<String>,
    /// Atlassian account id.
    pub account_id: Option<String>,
    /// Latest display name.
    pub display_name: Option<String>,
    /// Lower-cased raw identities and display names seen (bounded).
    pub search: Vec<String>,
}

/// Distinct spellings kept per author for `--author` matching.
const MAX_SEARCH: usize = 32;

impl AuthorRecord {
    /// Whether any spelling contains `needle` (already lower-cased).
    pub fn may_match(&self, needle: &str) -> bool {
        // A full list may have dropped spellings: then any author may match.
        self.search.len() >= MAX_SEARCH || self.search.iter().any(|s| s.contains(needle))
    }

    /// Takes in one more commit's author: its spellings, its latest names
    /// and its account; true when the record changed (it must be saved).
    pub fn absorb(&mut self, a: &Author) -> bool {
        let mut changed = false;
        for s in [a.raw.as_deref(), a.display_name.as_deref()]
            .into_iter()
            .flatten()
        {
            let s = s.to_lowercase();
            if !self.search.contains(&s) && self.search.len() < MAX_SEARCH {
                self.search.push(s);
                changed = true;
            }
        }
        let current = (
            self.raw.as_deref(),
            self.name.as_deref(),
            self.email.as_deref(),
            self.display_name.as_deref(),
        );
        let latest = (
            a.raw.as_deref(),
            a.name.as_deref(),
            a.email.as_deref(),
            a.display_name.as_deref(),
        );
        if a.raw.is_some() && current != latest {
            self.raw = a.raw.clone();
            self.name = a.name.clone();
            self.email = a.email.clone();
            self.display_name = a.display_name.clone().or(self.display_name.take());
            changed = true;
        }
        if self.uuid.is_none() && a.uuid.is_some() {
            self.uuid = a.uuid.clone();
            self.account_id = a.account_id.clone();
            changed = true;
        }
        changed
    }
}
