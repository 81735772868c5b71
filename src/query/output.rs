//! How `query`, `show` and `export` print (SPEC section 3): `json` (one
//! array), `ndjson` (one object per line), `csv` (a header row, RFC 4180
//! quoting, nested fields flattened with `_`) and `table` (aligned columns
//! for people, one line per row, cut to the terminal width).
//!
//! Everything here writes to a caller-supplied `Write` and returns io
//! errors, so that the binary can treat a closed pipe as a normal end.
//! Rows are streamed: only `table` holds a first batch back to size its
//! columns.
//!
//! Stored text comes from whoever wrote the commits, so the formats for
//! people (`table`, `show` text) never hand it to the terminal raw: every
//! character that would act on the terminal instead of being shown — C0 and
//! C1 controls, DEL (ESC starts the sequences that clear the screen or
//! retitle the window), and the bidirectional embedding, override and
//! isolate characters U+202A–U+202E and U+2066–U+2069 that reorder what is
//! shown ("Trojan Source") — is written as its Rust escape, `\u{1b}`. Only
//! layout survives: a `show` message keeps its lines and tabs, and a table
//! cell turns tabs and line breaks into spaces. Text without such characters
//! prints byte for byte as stored. `json`, `ndjson` and `csv` are for
//! programs and keep the exact data.

use std::io::{self, Write};

use serde::Serialize;

use super::{AuthorRow, Format, QueryError, RepoRow, Stats};
use crate::human::{display_width, printable, truncate};
use crate::record::RepoStatus;
use crate::record::{format_date, CommitRecord};

/// Why printing stopped.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Writing failed (a closed pipe is `ErrorKind::BrokenPipe`).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The rows could not be read.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// A format that is written to a file, asked as a stream of text
    /// (Parquet: see `query::parquet`).
    #[error("{0} is written to a file (export --output FILE), not printed")]
    NotText(&'static str),
}

impl OutputError {
    /// The exit code: the query's, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            OutputError::Query(e) => e.exit_code(),
            OutputError::Io(_) => crate::exit::RUNTIME,
            OutputError::NotText(_) => crate::exit::USAGE,
        }
    }
}

impl From<csv::Error> for OutputError {
    fn from(e: csv::Error) -> OutputError {
        match e.into_kind() {
            csv::ErrorKind::Io(io) => OutputError::Io(io),
            other => OutputError::Io(io::Error::other(format!("csv: {other:?}"))),
        }
    }
}

impl From<serde_json::Error> for OutputError {
    fn from(e: serde_json::Error) -> OutputError {
        // Keeps the original io::Error (and its kind) for io failures.
        OutputError::Io(io::Error::from(e))
    }
}

/// A kind of row that every format can print.
pub trait Tabular: Serialize {
    /// CSV column names.
    const CSV_HEADER: &'static [&'static str];
    /// CSV fields, in `CSV_HEADER` order (null = empty).
    fn csv_row(&self) -> Vec<String>;
}

/// A kind of row that also prints as one line of a table.
pub trait TableRow: Tabular {
    /// Table column titles; the last column takes the rest of the line.
    const TABLE_HEADER: &'static [&'static str];
    /// Table cells, in `TABLE_HEADER` order, each on one line.
    fn table_row(&self) -> Vec<String>;
}

/// The width to cut table lines to: the terminal's, else `COLUMNS`, else 120.
pub fn terminal_width() -> usize {
    if let Some((terminal_size::Width(w), _)) = terminal_size::terminal_size() {
        if w > 0 {
            return usize::from(w);
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c > 0)
        .unwrap_or(120)
}

/// Rows of a table held back to size its columns before the first line.
const TABLE_BATCH: usize = 500;
/// No table column but the last is wider than this.
const MAX_COLUMN: usize = 32;

/// Prints `rows` in `format`; `width` is the line width of `table`.
pub fn write_rows<W, T, I>(
    out: &mut W,
    format: Format,
    width: usize,
    rows: I,
) -> Result<(), OutputError>
where
    W: Write,
    T: TableRow,
    I: IntoIterator<Item = Result<T, QueryError>>,
{
    if format != Format::Table {
        return write_records(out, format, rows);
    }
    let mut rows = rows.into_iter();
    let mut batch: Vec<Vec<String>> = Vec::new();
    for row in rows.by_ref() {
        batch.push(row?.table_row());
        if batch.len() >= TABLE_BATCH {
            break;
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    let header: Vec<String> = T::TABLE_HEADER.iter().map(|s| s.to_string()).collect();
    let n = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| display_width(h)).collect();
    for cells in &batch {
        for (i, c) in cells.iter().enumerate().take(n.saturating_sub(1)) {
            widths[i] = widths[i].max(display_width(c).min(MAX_COLUMN));
        }
    }
    write_line(out, &header, &widths, width)?;
    for cells in &batch {
        write_line(out, cells, &widths, width)?;
    }
    for row in rows {
        write_line(out, &row?.table_row(), &widths, width)?;
    }
    out.flush()?;
    Ok(())
}

/// Prints `rows` for programs: `json` (one array), `csv` (a header row),
/// else `ndjson` (one object per line).
fn write_records<W, T, I>(out: &mut W, format: Format, rows: I) -> Result<(), OutputError>
where
    W: Write,
    T: Tabular,
    I: IntoIterator<Item = Result<T, QueryError>>,
{
    match format {
        Format::Json => {
            out.write_all(b"[")?;
            let mut first = true;
            for row in rows {
                let row = row?;
                if !first {
                    out.write_all(b",")?;
                }
                first = false;
                serde_json::to_writer(&mut *out, &row)?;
            }
            out.write_all(b"]\n")?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut *out);
            w.write_record(T::CSV_HEADER)?;
            for row in rows {
                w.write_record(row?.csv_row())?;
            }
            w.flush()?;
        }
        Format::Parquet => return Err(OutputError::NotText(format.name())),
        Format::Ndjson | Format::Table | Format::Text => {
            for row in rows {
                serde_json::to_writer(&mut *out, &row?)?;
                out.write_all(b"\n")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// One table line: every cell but the last padded to its column, two
/// spaces between columns, the whole line cut to `width`.
fn write_line<W: Write>(
    out: &mut W,
    cells: &[String],
    widths: &[usize],
    width: usize,
) -> io::Result<()> {
    let mut line = String::new();
    let last = cells.len().saturating_sub(1);
    for (i, cell) in cells.iter().enumerate() {
        if i == last {
            line.push_str(cell);
        } else {
            let w = widths.get(i).copied().unwrap_or(MAX_COLUMN);
            let cell = truncate(cell, w);
            let pad = w.saturating_sub(display_width(&cell));
            line.push_str(&cell);
            line.extend(std::iter::repeat_n(' ', pad + 2));
        }
    }
    let line = truncate(line.trim_end(), width);
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

/// A value for one table cell: on one line, so tabs and line breaks become
/// spaces; anything else that would act on the terminal is escaped as by
/// [`printable`].
fn cell(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\t' | '\n' | '\r') {
                ' '
            } else {
                c
            }
        })
        .collect();
    printable(&one_line).into_owned()
}

/// The first line of a commit message, for tables.
pub fn subject(message: &str) -> String {
    cell(message.lines().next().unwrap_or("").trim_end())
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

impl Tabular for CommitRecord {
    const CSV_HEADER: &'static [&'static str] = &[
        "workspace",
        "repo",
        "repo_uuid",
        "branch",
        "hash",
        "date",
        "author_raw",
        "author_name",
        "author_email",
        "author_uuid",
        "author_account_id",
        "author_display_name",
        "committer_raw",
        "committer_name",
        "committer_email",
        "message",
        "parents",
        "reachable",
    ];

    fn csv_row(&self) -> Vec<String> {
        let c = self.committer.as_ref();
        vec![
            self.workspace.clone(),
            self.repo.clone(),
            self.repo_uuid.clone(),
            self.branch.clone(),
            self.hash.clone(),
            format_date(&self.date),
            opt(&self.author.raw),
            opt(&self.author.name),
            opt(&self.author.email),
            opt(&self.author.uuid),
            opt(&self.author.account_id),
            opt(&self.author.display_name),
            c.and_then(|c| c.raw.clone()).unwrap_or_default(),
            c.and_then(|c| c.name.clone()).unwrap_or_default(),
            c.and_then(|c| c.email.clone()).unwrap_or_default(),
            self.message.clone(),
            self.parents.join(" "),
            self.reachable.to_string(),
        ]
    }
}

impl TableRow for CommitRecord {
    const TABLE_HEADER: &'static [&'static str] = &["DATE", "REPO", "HASH", "AUTHOR", "SUBJECT"];

    fn table_row(&self) -> Vec<String> {
        let author = self
            .author
            .name
            .as_ref()
            .or(self.author.display_name.as_ref())
            .or(self.author.raw.as_ref())
            .map(|s| cell(s))
            .unwrap_or_default();
        vec![
            format_date(&self.date),
            cell(&self.repo),
            self.hash.chars().take(10).collect(),
            author,
            subject(&self.message),
        ]
    }
}

impl Tabular for RepoRow {
    const CSV_HEADER: &'static [&'static str] = &[
        "workspace",
        "slug",
        "uuid",
        "default_branch",
        "status",
        "commits",
        "unreachable",
        "head",
        "last_sync",
        "last_error",
        "events",
        "last_checked",
        "last_changed",
        "last_decision",
    ];

    fn csv_row(&self) -> Vec<String> {
        vec![
            self.workspace.clone(),
            self.slug.clone(),
            self.uuid.clone(),
            opt(&self.default_branch),
            self.status.as_str().to_owned(),
            self.commits.to_string(),
            self.unreachable.to_string(),
            opt(&self.head),
            self.last_sync.map(|t| t.to_rfc3339()).unwrap_or_default(),
            opt(&self.last_error),
            serde_json::to_string(&self.events).unwrap_or_default(),
            self.last_checked
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            self.last_changed
                .map(|t| t.to_rfc3339())
                .unwrap_or_default(),
            opt(&self.last_decision),
        ]
    }
}

impl TableRow for RepoRow {
    const TABLE_HEADER: &'static [&'static str] = &[
        "WORKSPACE",
        "REPO",
        "BRANCH",
        "STATUS",
        "COMMITS",
        "UNREACHABLE",
        "HEAD",
        "LAST SYNC",
        "LAST CHECKED",
        "LAST CHANGED",
        "LAST PASS",
        "LAST ERROR",
    ];

    fn table_row(&self) -> Vec<String> {
        vec![
            cell(&self.workspace),
            cell(&self.slug),
            self.default_branch.as_deref().map(cell).unwrap_or_default(),
            self.status.as_str().to_owned(),
            self.commits.to_string(),
            self.unreachable.to_string(),
            self.head
                .as_deref()
                .map(|h| h.chars().take(10).collect())
                .unwrap_or_default(),
            self.last_sync
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            self.last_checked
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            self.last_changed
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                .unwrap_or_default(),
            self.last_decision.as_deref().map(cell).unwrap_or_default(),
            self.last_error.as_deref().map(cell).unwrap_or_default(),
        ]
    }
}

impl Tabular for AuthorRow {
    const CSV_HEADER: &'static [&'static str] = &[
        "identity",
        "name",
        "email",
        "display_name",
        "commits",
        "first",
        "last",
        "repositories",
    ];

    fn csv_row(&self) -> Vec<String> {
        vec![
            self.identity.clone(),
            opt(&self.name),
            opt(&self.email),
            opt(&self.display_name),
            self.commits.to_string(),
            self.first.to_rfc3339(),
            self.last.to_rfc3339(),
            self.repositories.to_string(),
        ]
    }
}

impl TableRow for AuthorRow {
    const TABLE_HEADER: &'static [&'static str] = &[
        "COMMITS", "REPOS", "FIRST", "LAST", "NAME", "EMAIL", "IDENTITY",
    ];

    fn table_row(&self) -> Vec<String> {
        let name = self
            .display_name
            .as_ref()
            .or(self.name.as_ref())
            .map(|s| cell(s))
            .unwrap_or_default();
        vec![
            self.commits.to_string(),
            self.repositories.to_string(),
            self.first.format("%Y-%m-%d").to_string(),
            self.last.format("%Y-%m-%d").to_string(),
            name,
            self.email.as_deref().map(cell).unwrap_or_default(),
            cell(&self.identity),
        ]
    }
}

impl Stats {
    fn repositories_total(&self) -> u64 {
        self.repositories.values().sum()
    }

    fn count(&self, status: RepoStatus) -> u64 {
        self.repositories.get(status.as_str()).copied().unwrap_or(0)
    }
}

impl Tabular for Stats {
    const CSV_HEADER: &'static [&'static str] = &[
        "repositories",
        "repositories_ok",
        "repositories_empty",
        "repositories_failed",
        "repositories_deleted",
        "repositories_new",
        "commits",
        "reachable_commits",
        "authors",
        "store_size_bytes",
        "last_pass",
    ];

    fn csv_row(&self) -> Vec<String> {
        let mut row = vec![self.repositories_total().to_string()];
        row.extend(RepoStatus::ALL.iter().map(|&s| self.count(s).to_string()));
        row.extend([
            self.commits.to_string(),
            self.reachable_commits.to_string(),
            self.authors.to_string(),
            self.store_size_bytes.to_string(),
            self.last_pass
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_default(),
        ]);
        row
    }
}

/// Prints `query stats`: like one row of [`write_rows`], except that the
/// table is one line per number.
pub fn write_stats<W: Write>(
    out: &mut W,
    format: Format,
    width: usize,
    stats: Stats,
) -> Result<(), OutputError> {
    if format != Format::Table {
        return write_records(out, format, [Ok(stats)]);
    }
    let mut lines: Vec<(String, String)> = vec![(
        "repositories".into(),
        stats.repositories_total().to_string(),
    )];
    for s in RepoStatus::ALL {
        lines.push((format!("  {}", s.as_str()), stats.count(s).to_string()));
    }
    lines.push(("commits".into(), stats.commits.to_string()));
    lines.push((
        "reachable commits".into(),
        stats.reachable_commits.to_string(),
    ));
    lines.push(("authors".into(), stats.authors.to_string()));
    lines.push((
        "store size (bytes)".into(),
        stats.store_size_bytes.to_string(),
    ));
    if let Some(serde_json::Value::Object(pass)) = &stats.last_pass {
        for (k, v) in pass {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            lines.push((format!("last pass {}", cell(k)), v));
        }
    }
    let w = lines
        .iter()
        .map(|(k, _)| display_width(k))
        .max()
        .unwrap_or(0);
    for (k, v) in lines {
        write_line(out, &[k, cell(&v)], &[w], width)?;
    }
    out.flush()?;
    Ok(())
}

/// Prints the records `show` found (several for a commit in several forks).
pub fn write_show<W: Write>(
    out: &mut W,
    format: Format,
    records: &[CommitRecord],
) -> Result<(), OutputError> {
    match format {
        Format::Json => {
            serde_json::to_writer(&mut *out, records)?;
            out.write_all(b"\n")?;
        }
        _ => {
            for (i, r) in records.iter().enumerate() {
                if i > 0 {
                    out.write_all(b"\n")?;
                }
                write_show_text(out, r)?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn write_show_text<W: Write>(out: &mut W, r: &CommitRecord) -> io::Result<()> {
    let none = "-".to_owned();
    let o = |s: &Option<String>| s.clone().unwrap_or_else(|| none.clone());
    let c = r.committer.as_ref();
    let fields: Vec<(&str, String)> = vec![
        ("commit", r.hash.clone()),
        ("workspace", r.workspace.clone()),
        ("repo", r.repo.clone()),
        ("repo_uuid", r.repo_uuid.clone()),
        ("branch", r.branch.clone()),
        ("reachable", r.reachable.to_string()),
        ("date", format_date(&r.date)),
        ("author", o(&r.author.raw)),
        ("author_name", o(&r.author.name)),
        ("author_email", o(&r.author.email)),
        ("author_uuid", o(&r.author.uuid)),
        ("author_account_id", o(&r.author.account_id)),
        ("author_display_name", o(&r.author.display_name)),
        (
            "committer",
            c.map(|c| o(&c.raw)).unwrap_or_else(|| none.clone()),
        ),
        (
            "committer_name",
            c.map(|c| o(&c.name)).unwrap_or_else(|| none.clone()),
        ),
        (
            "committer_email",
            c.map(|c| o(&c.email)).unwrap_or_else(|| none.clone()),
        ),
        (
            "parents",
            if r.parents.is_empty() {
                none.clone()
            } else {
                r.parents.join(" ")
            },
        ),
    ];
    for (k, v) in fields {
        writeln!(out, "{:<20} {}", format!("{k}:"), printable(&v))?;
    }
    writeln!(out)?;
    // Line by line: the body keeps its line breaks (a field above is one
    // line, so there a line break is escaped like any other control).
    for line in r.message.lines() {
        if line.is_empty() {
            writeln!(out)?;
        } else {
            writeln!(out, "    {}", printable(line))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_one_line_without_tabs() {
        assert_eq!(subject("Tabs\tin\tit\n\nbody\n"), "Tabs in it");
        assert_eq!(subject(""), "");
    }

    #[test]
    fn table_cells_are_one_line_and_escaped() {
        assert_eq!(cell("Zoë\tÅngström"), "Zoë Ångström");
        assert_eq!(cell("a\tb\r\nc\u{1b}[0m"), r"a b  c\u{1b}[0m");
    }
}
