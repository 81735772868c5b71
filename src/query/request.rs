//! A question to the store as the CLI asks it and the daemon's API receives
//! it: what (commits, authors, repositories, totals, one commit, every
//! commit), with which filter, in which format. The type owns its
//! conversion to and from the API's URL, so the CLI and the daemon cannot
//! disagree about a parameter, and [`super::answer`] answers it the same
//! way wherever it is asked.
//!
//! Adding a commit filter: a field of [`CommitFilter`] (with its `clap`
//! attribute: the CLI flag), its two lines in [`CommitFilter::to_params`] and
//! [`CommitFilter::from_params`] (and its name in [`CommitFilter::PARAMS`]),
//! and its check in the query function. Nothing else.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::parse_time;

/// The API's path prefix.
pub const API_PREFIX: &str = "/api/v1";

/// Filters of `query commits` (and, where they apply, `query authors`). Its
/// doc comments are the CLI's help text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
pub struct CommitFilter {
    /// Only this workspace.
    #[arg(long, value_name = "W")]
    pub workspace: Option<String>,
    /// Only this repository slug (repeatable).
    #[arg(long = "repo", value_name = "SLUG")]
    pub repos: Vec<String>,
    /// Case-insensitive substring of the author's `Name <email>` or display name.
    #[arg(long, value_name = "TEXT")]
    pub author: Option<String>,
    /// Commits at or after this time (RFC 3339, or YYYY-MM-DD = midnight UTC).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub since: Option<DateTime<Utc>>,
    /// Commits before this time (RFC 3339, or YYYY-MM-DD = midnight UTC).
    #[arg(long, value_name = "T", value_parser = parse_time)]
    pub until: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the message.
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Case-insensitive substring of the committer's `Name <email>`.
    #[arg(long, value_name = "TEXT")]
    #[serde(default)]
    pub committer: Option<String>,
    /// Include commits no longer reachable from the default branch.
    #[arg(long)]
    pub all: bool,
    /// At most this many results.
    #[arg(long, value_name = "N", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub limit: Option<usize>,
}

impl CommitFilter {
    /// The URL parameter of each filter (the CLI's flag without `--`).
    pub const PARAMS: &'static [&'static str] = &[
        "workspace",
        "repo",
        "author",
        "since",
        "until",
        "grep",
        "committer",
        "all",
        "limit",
    ];

    /// The filter as URL parameters (what the CLI sends the daemon).
    pub fn to_params(&self, p: &mut Vec<(String, String)>) {
        let mut put = |k: &str, v: String| p.push((k.to_owned(), v));
        if let Some(w) = &self.workspace {
            put("workspace", w.clone());
        }
        for r in &self.repos {
            put("repo", r.clone());
        }
        if let Some(a) = &self.author {
            put("author", a.clone());
        }
        if let Some(t) = self.since {
            put("since", t.to_rfc3339());
        }
        if let Some(t) = self.until {
            put("until", t.to_rfc3339());
        }
        if let Some(g) = &self.grep {
            put("grep", g.clone());
        }
        if let Some(c) = &self.committer {
            put("committer", c.clone());
        }
        if self.all {
            put("all", "true".into());
        }
        if let Some(n) = self.limit {
            put("limit", n.to_string());
        }
    }

    /// Whether a commit must be read to tell if it matches (the indexes
    /// answer only repository, date and reachability).
    pub fn checks_each_commit(&self) -> bool {
        self.author.is_some() || self.grep.is_some() || self.committer.is_some()
    }

    /// The filter from URL parameters (what the daemon receives).
    pub fn from_params(p: &Params) -> Result<CommitFilter, BadRequest> {
        Ok(CommitFilter {
            workspace: p.one("workspace")?,
            repos: p.all("repo"),
            author: p.one("author")?,
            since: p.time("since")?,
            until: p.time("until")?,
            grep: p.one("grep")?,
            committer: p.one("committer")?,
            all: p.flag("all")?,
            limit: p.limit("limit")?,
        })
    }
}

/// How an answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people, cut to a width (the CLI's only: over the
    /// API it is rendered by the CLI from the `json` rows).
    Table,
    /// One JSON array (`show`: of every matching record).
    Json,
    /// One JSON object per line.
    Ndjson,
    /// A header row, then one row per record.
    Csv,
    /// `show`'s full record for people.
    Text,
    /// Typed columns in a Parquet file (`export`, `export --changes`; the
    /// CLI's only: it is written to a file, and from the daemon the CLI
    /// asks for `ndjson` and writes the file itself).
    Parquet,
}

impl Format {
    /// Every format, for parsing names.
    const ALL: [Format; 6] = [
        Format::Table,
        Format::Json,
        Format::Ndjson,
        Format::Csv,
        Format::Text,
        Format::Parquet,
    ];

    /// Its name on the command line and in the API's `format` parameter.
    pub fn name(self) -> &'static str {
        match self {
            Format::Table => "table",
            Format::Json => "json",
            Format::Ndjson => "ndjson",
            Format::Csv => "csv",
            Format::Text => "text",
            Format::Parquet => "parquet",
        }
    }

    /// The format called `name`.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The HTTP content type of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Table | Format::Text => "text/plain; charset=utf-8",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// What is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Question {
    /// `query commits`: matching commits, newest first.
    Commits(CommitFilter),
    /// `query authors`: per author identity, the matching commits.
    Authors(CommitFilter),
    /// `query repos`: every repository (of one workspace).
    Repos {
        /// Only this workspace.
        workspace: Option<String>,
    },
    /// `query stats`: the store's totals.
    Stats,
    /// `show`: one commit (a hash or a prefix of 7+ hex digits), in every
    /// repository that has it.
    Show {
        /// As given.
        hash: String,
    },
    /// `export`: every stored commit, repository by repository.
    Export {
        /// Include commits no longer reachable from the default branch.
        all: bool,
    },
    /// `export --changes`: the change feed after a seq (see `store::feed`).
    Changes {
        /// Changes with a greater seq.
        after: u64,
        /// At most this many.
        limit: Option<u64>,
        /// The daemon waits up to this many seconds for a change after
        /// `after` before answering (long poll; 0: answer at once).
        wait: u64,
    },
}

/// The longest long poll of `GET /api/v1/changes?wait=`.
pub const MAX_WAIT_SECONDS: u64 = 300;

impl Question {
    /// The formats this question can be answered in; the first is the
    /// API's default.
    pub fn formats(&self) -> &'static [Format] {
        match self {
            Question::Commits(_)
            | Question::Authors(_)
            | Question::Repos { .. }
            | Question::Stats => &[Format::Json, Format::Ndjson, Format::Csv, Format::Table],
            Question::Show { .. } => &[Format::Json, Format::Text],
            Question::Export { .. } => &[Format::Ndjson, Format::Csv, Format::Parquet],
            Question::Changes { .. } => &[Format::Ndjson, Format::Parquet],
        }
    }

    /// The API path that asks it (percent-encoded).
    fn path(&self) -> String {
        let tail = match self {
            Question::Commits(_) => "commits".to_owned(),
            Question::Authors(_) => "authors".to_owned(),
            Question::Repos { .. } => "repos".to_owned(),
            Question::Stats => "stats".to_owned(),
            // Only hex digits are a hash: anything else is refused by the
            // daemon, but it must arrive as one path segment.
            Question::Show { hash } => format!(
                "show/{}",
                percent_encoding::utf8_percent_encode(hash, percent_encoding::NON_ALPHANUMERIC)
            ),
            Question::Export { .. } => "export".to_owned(),
            Question::Changes { .. } => "changes".to_owned(),
        };
        format!("{API_PREFIX}/{tail}")
    }

    /// Its own parameters, and their names.
    fn to_params(&self, p: &mut Vec<(String, String)>) {
        match self {
            Question::Commits(f) | Question::Authors(f) => f.to_params(p),
            Question::Repos { workspace } => {
                p.extend(
                    workspace
                        .iter()
                        .map(|w| ("workspace".to_owned(), w.clone())),
                );
            }
            Question::Export { all: true } => p.push(("all".into(), "true".into())),
            Question::Changes { after, limit, wait } => {
                p.push(("after".into(), after.to_string()));
                p.extend(limit.map(|l| ("limit".to_owned(), l.to_string())));
                if *wait > 0 {
                    p.push(("wait".into(), wait.to_string()));
                }
            }
            Question::Stats | Question::Show { .. } | Question::Export { all: false } => {}
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// No question has this path (HTTP 404).
    #[error("no such endpoint")]
    NoSuchEndpoint,
    /// A parameter that is unknown, repeated, or has a value that does not
    /// parse, or a format the question cannot be answered in (HTTP 400).
    #[error("{0}")]
    Invalid(String),
}

/// A question and how to print its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    question: Question,
    format: Format,
    width: usize,
}

impl Request {
    /// A request; refused when `format` is not one of the question's.
    /// `width` is the line width of a table (other formats ignore it).
    pub fn new(question: Question, format: Format, width: usize) -> Result<Request, BadRequest> {
        let formats = question.formats();
        if !formats.contains(&format) {
            return Err(bad_format(format.name(), formats));
        }
        Ok(Request {
            question,
            format,
            width,
        })
    }

    /// What is asked.
    pub fn question(&self) -> &Question {
        &self.question
    }

    /// How the answer is printed.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The line width of a table.
    pub fn width(&self) -> usize {
        self.width
    }

    /// The same question in another format (a table asked of the daemon is
    /// fetched as `json` rows).
    pub fn in_format(&self, format: Format) -> Result<Request, BadRequest> {
        Request::new(self.question.clone(), format, self.width)
    }

    /// The API path and parameters that ask it.
    pub fn to_url(&self) -> (String, Vec<(String, String)>) {
        let mut params = Vec::new();
        self.question.to_params(&mut params);
        params.push(("format".into(), self.format.name().into()));
        (self.question.path(), params)
    }

    /// The request an API URL asks: `path` (percent-encoded, under
    /// [`API_PREFIX`]) and its raw query. A table is never served: it is
    /// for people, and the CLI renders it from the `json` rows; nor is
    /// Parquet: the CLI writes it from the `ndjson` lines.
    pub fn from_url(path: &str, query: Option<&str>) -> Result<Request, BadRequest> {
        let tail = path
            .strip_prefix(API_PREFIX)
            .and_then(|t| t.strip_prefix('/'))
            .ok_or(BadRequest::NoSuchEndpoint)?;
        let filter_params = || [CommitFilter::PARAMS, &["format"]].concat();
        let (question, p) = match tail {
            "commits" | "authors" => {
                let p = Params::parse(query, &filter_params())?;
                let f = CommitFilter::from_params(&p)?;
                let q = if tail == "commits" {
                    Question::Commits(f)
                } else {
                    Question::Authors(f)
                };
                (q, p)
            }
            "repos" => {
                let p = Params::parse(query, &["workspace", "format"])?;
                let workspace = p.one("workspace")?;
                (Question::Repos { workspace }, p)
            }
            "stats" => (Question::Stats, Params::parse(query, &["format"])?),
            "changes" => {
                let p = Params::parse(query, &["after", "limit", "wait", "format"])?;
                let number = |name: &str| -> Result<Option<u64>, BadRequest> {
                    p.one(name)?
                        .map(|v| {
                            v.parse::<u64>().map_err(|_| {
                                BadRequest::Invalid(format!("{name}={v:?}: give a whole number"))
                            })
                        })
                        .transpose()
                };
                let wait = number("wait")?.unwrap_or(0);
                if wait > MAX_WAIT_SECONDS {
                    return Err(BadRequest::Invalid(format!(
                        "wait={wait}: at most {MAX_WAIT_SECONDS} seconds"
                    )));
                }
                let limit = p.limit("limit")?.map(|l| l as u64);
                (
                    Question::Changes {
                        after: number("after")?.unwrap_or(0),
                        limit,
                        wait,
                    },
                    p,
                )
            }
            "export" => {
                let p = Params::parse(query, &["all", "format"])?;
                (
                    Question::Export {
                        all: p.flag("all")?,
                    },
                    p,
                )
            }
            _ => match tail.strip_prefix("show/") {
                Some(hash) if !hash.is_empty() && !hash.contains('/') => {
                    let hash = percent_encoding::percent_decode_str(hash)
                        .decode_utf8_lossy()
                        .into_owned();
                    (Question::Show { hash }, Params::parse(query, &["format"])?)
                }
                _ => return Err(BadRequest::NoSuchEndpoint),
            },
        };
        let served: Vec<Format> = question
            .formats()
            .iter()
            .copied()
            .filter(|f| !matches!(f, Format::Table | Format::Parquet))
            .collect();
        let format = match p.one("format")? {
            None => served[0],
            Some(name) => Format::from_name(&name)
                .filter(|f| served.contains(f))
                .ok_or_else(|| bad_format(&name, &served))?,
        };
        Request::new(question, format, usize::MAX)
    }
}

fn bad_format(name: &str, choices: &[Format]) -> BadRequest {
    let names: Vec<&str> = choices.iter().map(|f| f.name()).collect();
    BadRequest::Invalid(format!("format={name:?}: give one of {}", names.join(", ")))
}

/// URL query parameters, checked against the names a question takes.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses a raw query string; an unknown name is refused.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Params, BadRequest> {
        let pairs: Vec<(String, String)> =
            url::form_urlencoded::parse(raw.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
        for (k, _) in &pairs {
            if !allowed.contains(&k.as_str()) {
                return Err(BadRequest::Invalid(format!(
                    "unknown parameter {k:?}; this endpoint takes: {}",
                    allowed.join(", ")
                )));
            }
        }
        Ok(Params(pairs))
    }

    /// Every value of a repeatable parameter.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The value of a parameter given at most once.
    pub fn one(&self, name: &str) -> Result<Option<String>, BadRequest> {
        let mut values = self.all(name);
        if values.len() > 1 {
            return Err(BadRequest::Invalid(format!(
                "parameter {name:?} given more than once"
            )));
        }
        Ok(values.pop())
    }

    /// A flag: absent = false; `all`, `all=`, `all=true`, `all=1` = true.
    pub fn flag(&self, name: &str) -> Result<bool, BadRequest> {
        match self.one(name)?.as_deref() {
            None => Ok(false),
            Some("" | "true" | "1" | "yes") => Ok(true),
            Some("false" | "0" | "no") => Ok(false),
            Some(v) => Err(BadRequest::Invalid(format!(
                "{name}={v:?}: give true or false"
            ))),
        }
    }

    /// An instant (as `--since` / `--until` take it).
    pub fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, BadRequest> {
        self.one(name)?
            .map(|v| parse_time(&v).map_err(|e| BadRequest::Invalid(format!("{name}: {e}"))))
            .transpose()
    }

    /// A whole number of 1 or more.
    pub fn limit(&self, name: &str) -> Result<Option<usize>, BadRequest> {
        match self.one(name)? {
            None => Ok(None),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(BadRequest::Invalid(format!(
                    "{name}={v:?}: give a whole number of 1 or more"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: &Request) -> Request {
        let (path, params) = r.to_url();
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&params)
            .finish();
        Request::from_url(&path, Some(&query)).unwrap()
    }

    #[test]
    fn every_question_survives_its_url() {
        let filter = CommitFilter {
            workspace: Some("acme".into()),
            repos: vec!["a b".into(), "c&d".into()],
            author: Some("Zoë <z@x>".into()),
            since: parse_time("2024-01-01").ok(),
            until: parse_time("2024-06-01T00:00:00.123456+02:00").ok(),
            grep: Some("fix=1".into()),
            committer: Some("CI Bot <ci@x>".into()),
            all: true,
            limit: Some(5),
        };
        for (question, format) in [
            (Question::Commits(filter.clone()), Format::Csv),
            (Question::Authors(CommitFilter::default()), Format::Ndjson),
            (
                Question::Repos {
                    workspace: Some("acme".into()),
                },
                Format::Json,
            ),
            (Question::Stats, Format::Csv),
            (
                Question::Show {
                    hash: "0123abc".into(),
                },
                Format::Text,
            ),
            (Question::Export { all: true }, Format::Csv),
            (Question::Export { all: false }, Format::Ndjson),
        ] {
            let r = Request::new(question, format, usize::MAX).unwrap();
            assert_eq!(round_trip(&r), r);
        }
    }

    #[test]
    fn defaults_tables_and_bad_parameters() {
        let commits = Request::from_url("/api/v1/commits", None).unwrap();
        assert_eq!(commits.format(), Format::Json);
        let export = Request::from_url("/api/v1/export", Some("all")).unwrap();
        assert_eq!(export.question(), &Question::Export { all: true });
        assert_eq!(export.format(), Format::Ndjson);
        for (path, query) in [
            ("/api/v1/commits", "format=table"),
            ("/api/v1/commits", "colour=blue"),
            ("/api/v1/commits", "limit=0"),
            ("/api/v1/commits", "author=a&author=b"),
            ("/api/v1/export", "format=json"),
            ("/api/v1/export", "format=parquet"),
            ("/api/v1/changes", "format=parquet"),
            ("/api/v1/show/abc", "format=csv"),
        ] {
            assert!(
                matches!(
                    Request::from_url(path, Some(query)),
                    Err(BadRequest::Invalid(_))
                ),
                "{path}?{query}"
            );
        }
        for path in [
            "/api/v1/nothing",
            "/api/v1/show/",
            "/metrics",
            "/api/v1/show/a/b",
        ] {
            assert_eq!(
                Request::from_url(path, None),
                Err(BadRequest::NoSuchEndpoint),
                "{path}"
            );
        }
        assert!(Request::new(Question::Stats, Format::Text, 80).is_err());
    }
}
