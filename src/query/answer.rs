//! The one way a [`Request`] is answered: the CLI on its own store and the
//! daemon's API both call [`answer`], so they print the same bytes by
//! construction. [`table_from_json`] renders a table from the `json` rows a
//! daemon sent, with the same code as a local table.

use std::io::Write;

use super::output::{self, write_rows, write_show, write_stats, OutputError};
use super::{
    authors, commits, export, repos, show, stats, AuthorRow, Format, Question, RepoRow, Request,
    Stats,
};
use crate::record::CommitRecord;
use crate::store::Store;

/// Answers `req` from `store` into `out`, streaming (rows are printed as
/// they are read; only a table holds its first batch back).
pub fn answer(store: &Store, req: &Request, mut out: &mut dyn Write) -> Result<(), OutputError> {
    let (format, width) = (req.format(), req.width());
    match req.question() {
        Question::Commits(f) => write_rows(&mut out, format, width, commits(store, f)?),
        Question::Authors(f) => write_rows(&mut out, format, width, ok(authors(store, f)?)),
        Question::Repos { workspace } => write_rows(
            &mut out,
            format,
            width,
            ok(repos(store, workspace.as_deref())?),
        ),
        Question::Stats => write_stats(&mut out, format, width, stats(store)?),
        Question::Show { hash } => write_show(&mut out, format, &show(store, hash)?),
        Question::Export { all } => {
            let records = export(store, *all)?;
            // Reading (decompressing, decoding) on a second thread while
            // this one prints: the two take about as long as each other.
            std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::sync_channel(EXPORT_QUEUE);
                scope.spawn(move || {
                    let mut batch = Vec::with_capacity(EXPORT_BATCH);
                    for r in records {
                        match r {
                            Ok(c) => {
                                batch.push(c);
                                if batch.len() == EXPORT_BATCH
                                    && tx.send(Ok(std::mem::take(&mut batch))).is_err()
                                {
                                    return;
                                }
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    if !batch.is_empty() {
                        let _ = tx.send(Ok(batch));
                    }
                });
                let rows = rx.into_iter().flat_map(|b: Result<Vec<CommitRecord>, _>| {
                    let (ok, err) = match b {
                        Ok(v) => (v, None),
                        Err(e) => (Vec::new(), Some(Err(e))),
                    };
                    ok.into_iter().map(Ok).chain(err)
                });
                // Dropping the receiver (an error, a closed pipe) stops
                // the reader at its next send.
                write_rows(&mut out, format, width, rows)
            })
        }
    }
}

/// Records handed from the reading thread to the printing one at a time.
const EXPORT_BATCH: usize = 512;

/// Batches the reading thread may be ahead.
const EXPORT_QUEUE: usize = 8;

/// Rows already read, as the row streams the printers take.
fn ok<T>(rows: Vec<T>) -> impl Iterator<Item = Result<T, super::QueryError>> {
    rows.into_iter().map(Ok)
}

/// Prints as a table of `width` columns the `json` answer to `question`
/// (what a daemon sends for a table: it serves formats for programs only).
pub fn table_from_json(
    question: &Question,
    json: &[u8],
    width: usize,
    mut out: &mut dyn Write,
) -> Result<(), OutputError> {
    fn rows<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<Vec<T>, OutputError> {
        serde_json::from_slice(json).map_err(|e| {
            OutputError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("undecodable answer from the daemon: {e}"),
            ))
        })
    }
    let table = Format::Table;
    match question {
        Question::Commits(_) | Question::Export { .. } => {
            write_rows(&mut out, table, width, ok(rows::<CommitRecord>(json)?))
        }
        Question::Authors(_) => write_rows(&mut out, table, width, ok(rows::<AuthorRow>(json)?)),
        Question::Repos { .. } => write_rows(&mut out, table, width, ok(rows::<RepoRow>(json)?)),
        Question::Stats => {
            for s in rows::<Stats>(json)? {
                write_stats(&mut out, table, width, s)?;
            }
            Ok(())
        }
        Question::Show { .. } => {
            output::write_show(&mut out, Format::Text, &rows::<CommitRecord>(json)?)
        }
    }
}
