//! The one way a [`Request`] is answered: the CLI on its own store and the
//! daemon's API both call [`answer`], so they print the same bytes by
//! construction. [`table_from_json`] renders a table from the `json` rows a
//! daemon sent, with the same code as a local table.

use std::io::Write;

use super::output::{self, write_rows, write_show, write_stats, OutputError};
use super::{
    authors, commits, export, export_order, repos, show, stats, AuthorRow, Format, Question,
    RepoRow, Request, Stats,
};
use crate::record::CommitRecord;
use crate::store::Store;

/// Answers `req` from `store` into `out`, streaming (rows are printed as
/// they are read; only a table holds its first batch back).
pub fn answer(store: &Store, req: &Request, mut out: &mut dyn Write) -> Result<(), OutputError> {
    let (format, width) = (req.format(), req.width());
    if format == Format::Parquet {
        return Err(OutputError::NotText(format.name()));
    }
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
        Question::Export { all } if matches!(format, Format::Ndjson | Format::Json) => {
            export_json(store, *all, format == Format::Ndjson, out)
        }
        Question::Export { all } => write_rows(&mut out, format, width, export(store, *all)?),
        Question::Changes { after, limit, .. } => {
            store
                .write_changes(*after, *limit, out)
                .map_err(|e| match e {
                    crate::store::feed::ChangesError::Store(e) => OutputError::Query(e.into()),
                    crate::store::feed::ChangesError::Io(e) => OutputError::Io(e),
                })?;
            Ok(())
        }
    }
}

/// What a worker of [`export_json`] hands over for one repository.
enum Part {
    /// Printed records (each followed by `\n`, or preceded by `,`).
    Bytes(Vec<u8>),
    /// The repository is done.
    Done,
    /// Reading failed.
    Failed(super::QueryError),
}

/// Workers print up to this many bytes before handing them over.
const PART_BYTES: usize = 256 << 10;

/// How many repositories a worker may be ahead of the one being written.
const WINDOW: usize = 8;

/// Printed bytes waiting for their turn, at most (beyond one part per
/// worker): a worker ahead of the repository being written waits.
const PENDING_BYTES: usize = 8 << 20;

/// `export` as NDJSON or JSON: repositories are read and printed on
/// worker threads (one repository each at a time), and written here in
/// export order — the same bytes as printing them one by one, at the speed
/// of the cores (reading a block and printing its records take about as
/// long as each other, and a thread that both allocates and frees its own
/// records does not fight the allocator).
fn export_json(
    store: &Store,
    all: bool,
    ndjson: bool,
    out: &mut dyn Write,
) -> Result<(), OutputError> {
    use std::collections::{BTreeMap, VecDeque};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let repos = export_order(store)?;
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let next = AtomicUsize::new(0);
    let written = AtomicUsize::new(0);
    let queued = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Part)>(4 * workers);
        for _ in 0..workers {
            let tx = tx.clone();
            let (repos, next, written, queued, stop) = (&repos, &next, &written, &queued, &stop);
            // Waits while this worker is too far ahead (never when its
            // repository is the one being written); false: stop.
            let wait_turn = move |i: usize, far: usize| loop {
                if stop.load(Ordering::Acquire) {
                    return false;
                }
                let current = written.load(Ordering::Acquire);
                if i <= current
                    || (i <= current.saturating_add(far)
                        && queued.load(Ordering::Acquire) < PENDING_BYTES)
                {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            };
            scope.spawn(move || loop {
                let send = |i: usize, b: Vec<u8>| {
                    queued.fetch_add(b.len(), Ordering::AcqRel);
                    tx.send((i, Part::Bytes(b))).is_ok()
                };
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(repo) = repos.get(i) else { return };
                if !wait_turn(i, WINDOW) {
                    return;
                }
                let mut buf = Vec::new();
                let mut cancelled = false;
                let read = store.export_json(repo, all, &mut |record| {
                    if stop.load(Ordering::Relaxed) {
                        cancelled = true;
                        return false;
                    }
                    if !ndjson {
                        buf.push(b',');
                    }
                    buf.extend_from_slice(record);
                    if ndjson {
                        buf.push(b'\n');
                    }
                    if buf.len() >= PART_BYTES
                        && !(wait_turn(i, usize::MAX) && send(i, std::mem::take(&mut buf)))
                    {
                        cancelled = true;
                        return false;
                    }
                    true
                });
                if let Err(e) = read {
                    let _ = tx.send((i, Part::Failed(e.into())));
                    return;
                }
                if cancelled {
                    return;
                }
                if !(send(i, buf) && tx.send((i, Part::Done)).is_ok()) {
                    return;
                }
            });
        }
        drop(tx);
        let result = (|| {
            if !ndjson {
                out.write_all(b"[")?;
            }
            let mut first = true;
            let mut current = 0usize;
            let mut pending: BTreeMap<usize, VecDeque<Part>> = BTreeMap::new();
            for (i, part) in rx.iter() {
                pending.entry(i).or_default().push_back(part);
                while let Some(queue) = pending.get_mut(&current) {
                    let Some(part) = queue.pop_front() else { break };
                    match part {
                        Part::Bytes(b) => {
                            queued.fetch_sub(b.len(), Ordering::AcqRel);
                            let b = if first && !ndjson && !b.is_empty() {
                                first = false;
                                &b[1..]
                            } else {
                                &b[..]
                            };
                            out.write_all(b)?;
                        }
                        Part::Done => {
                            pending.remove(&current);
                            current += 1;
                            written.store(current, Ordering::Release);
                        }
                        Part::Failed(e) => return Err(OutputError::from(e)),
                    }
                }
            }
            if !ndjson {
                out.write_all(b"]\n")?;
            }
            out.flush()?;
            Ok(())
        })();
        if result.is_err() {
            stop.store(true, Ordering::Release);
        }
        drop(rx);
        result
    })
}

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
        Question::Commits(_) | Question::Export { .. } | Question::Changes { .. } => {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Author, RepoState};
    use chrono::DateTime;

    fn record(repo: &RepoState, i: usize) -> CommitRecord {
        CommitRecord {
            workspace: repo.workspace.clone(),
            repo: repo.slug.clone(),
            repo_uuid: repo.uuid.clone(),
            branch: "main".into(),
            hash: format!("{:040x}", i * 7919 + repo.slug.len()),
            date: DateTime::parse_from_rfc3339("2024-05-01T11:37:07+02:00").unwrap()
                + chrono::Duration::minutes(i as i64),
            author: Author {
                raw: Some(format!("Dev {} <dev{}@x.io>", i % 3, i % 3)),
                name: Some(format!("Dev {}", i % 3)),
                email: Some(format!("dev{}@x.io", i % 3)),
                uuid: None,
                account_id: None,
                display_name: None,
            },
            committer: None,
            message: format!("change \"{i}\"\n\nbody é"),
            parents: vec![],
            reachable: true,
        }
    }

    /// The parallel NDJSON/JSON export prints exactly what printing the
    /// records one by one prints.
    #[test]
    fn the_parallel_export_prints_the_bytes_of_the_serial_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let serial = |store: &Store, format: Format, all: bool| {
            let mut out = Vec::new();
            write_rows(&mut out, format, 80, export(store, all).unwrap()).unwrap();
            out
        };
        let parallel = |store: &Store, format: Format, all: bool| {
            let mut out = Vec::new();
            export_json(store, all, format == Format::Ndjson, &mut out).unwrap();
            out
        };
        let check = |store: &Store| {
            for format in [Format::Ndjson, Format::Json] {
                for all in [false, true] {
                    assert_eq!(
                        String::from_utf8(parallel(store, format, all)).unwrap(),
                        String::from_utf8(serial(store, format, all)).unwrap(),
                        "{format:?} all={all}"
                    );
                }
            }
        };
        check(&store);
        // Repositories of 0, 1, many commits (more than a part), in an
        // order unlike export order, one with unreachable commits.
        let (_filled, store) = crate::query::test_store(
            &[(0, "m"), (3000, "b"), (1, "z"), (250, "a"), (40, "k")],
            record,
        );
        check(&store);
    }
}
