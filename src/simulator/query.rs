//! The `q` filter of the repository listing, for the few forms clients use:
//! `updated_on>=2024-01-01T00:00:00+00:00`, `slug="web-app"`, `name~"api"`,
//! joined with `AND`. Anything else answers 400 as Bitbucket does for a
//! query it cannot parse.

use chrono::{DateTime, FixedOffset, NaiveDate};

use super::content::datetime;
use super::world::Repo;

/// One comparison.
struct Cond {
    field: String,
    op: String,
    value: String,
}

/// A parsed filter: all conditions must hold.
pub(crate) struct Filter(Vec<Cond>);

fn parse_date(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok().or_else(|| {
        let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
        Some(d.and_hms_opt(0, 0, 0)?.and_utc().fixed_offset())
    })
}

impl Filter {
    /// Parses `q`; `None` if it is not understood.
    pub(crate) fn parse(q: &str) -> Option<Filter> {
        let mut conds = Vec::new();
        for part in q.split(" AND ").flat_map(|p| p.split(" and ")) {
            let part = part.trim();
            let at = part.find(['=', '!', '<', '>', '~'])?;
            let field = part[..at].trim().to_owned();
            let rest = &part[at..];
            let op_len =
                if rest.starts_with(">=") || rest.starts_with("<=") || rest.starts_with("!=") {
                    2
                } else {
                    1
                };
            let op = rest[..op_len].to_owned();
            if op == "!" {
                return None;
            }
            let raw = rest[op_len..].trim();
            let value = raw
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(raw)
                .to_owned();
            let dates = matches!(field.as_str(), "updated_on" | "created_on");
            let strings = matches!(field.as_str(), "slug" | "name" | "full_name" | "uuid");
            let ok = (dates && parse_date(&value).is_some() && op != "~")
                || (strings && matches!(op.as_str(), "=" | "!=" | "~"))
                || (field == "is_private" && matches!(value.as_str(), "true" | "false"));
            if !ok {
                return None;
            }
            conds.push(Cond { field, op, value });
        }
        Some(Filter(conds))
    }

    /// Whether a repository of workspace `ws` matches.
    pub(crate) fn matches(&self, ws: &str, r: &Repo) -> bool {
        self.0.iter().all(|c| {
            let date = |secs| {
                let Some(want) = parse_date(&c.value) else {
                    return false;
                };
                let have = datetime(secs, 0);
                match c.op.as_str() {
                    ">=" => have >= want,
                    ">" => have > want,
                    "<=" => have <= want,
                    "<" => have < want,
                    "=" => have == want,
                    "!=" => have != want,
                    _ => false,
                }
            };
            let text = |have: &str| match c.op.as_str() {
                "=" => have == c.value,
                "!=" => have != c.value,
                "~" => have.to_lowercase().contains(&c.value.to_lowercase()),
                _ => false,
            };
            match c.field.as_str() {
                "updated_on" => date(r.updated_on),
                "created_on" => date(r.created_on),
                "slug" => text(&r.slug),
                "name" => text(&r.name),
                "full_name" => text(&format!("{ws}/{}", r.slug)),
                "uuid" => text(&r.uuid),
                "is_private" => (r.is_private.to_string() == c.value) == (c.op == "="),
                _ => false,
            }
        })
    }
}
