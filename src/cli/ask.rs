//! The commands that ask the store: `query`, `show` and `export`. Each
//! builds one [`Request`] and asks its [`Source`] — the store itself, or the
//! daemon holding it — which prints the same bytes either way.

use std::path::{Path, PathBuf};

use bbcrawl::config::Overrides;
use bbcrawl::exit;
use bbcrawl::query::output::terminal_width;
use bbcrawl::query::{Format, Question, Request};
use bbcrawl::source::Source;

use super::{io, load_config, CliError, Global, QueryCommand};

/// Export writes in large chunks: fewer syscalls for a million records.
const EXPORT_BUFFER: usize = 1 << 16;

/// Opens the configured store for a question (never creates one).
fn source(g: &Global) -> Result<Source, CliError> {
    let cfg = load_config(g, Overrides::default())?;
    Ok(Source::open(&cfg.store)?)
}

/// Asks `req` and prints the answer on stdout.
async fn ask_to_stdout(g: &Global, req: Request, buffer: usize) -> Result<u8, CliError> {
    let source = source(g)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(buffer, stdout.lock());
    source.answer(&req, &mut out).await?;
    drop(out);
    source.close_at_exit();
    Ok(exit::SUCCESS)
}

/// A request the command line built; its format is one the command offers.
fn request(question: Question, format: Format) -> Result<Request, CliError> {
    Request::new(question, format, terminal_width()).map_err(|e| CliError::Usage(e.to_string()))
}

/// `bbcrawl query commits|repos|authors|stats`.
pub(super) async fn query(g: &Global, what: QueryCommand) -> Result<u8, CliError> {
    let (question, format) = match what {
        QueryCommand::Commits { filter, format } => (Question::Commits(filter), format),
        QueryCommand::Authors { filter, format } => (Question::Authors(filter), format),
        QueryCommand::Repos { workspace, format } => (Question::Repos { workspace }, format),
        QueryCommand::Stats { format } => (Question::Stats, format),
    };
    let req = request(question, format.resolve())?;
    ask_to_stdout(g, req, 8 * 1024).await
}

/// `bbcrawl show HASH`.
pub(super) async fn show(g: &Global, hash: String, format: Format) -> Result<u8, CliError> {
    ask_to_stdout(g, request(Question::Show { hash }, format)?, 8 * 1024).await
}

/// `bbcrawl export [--output FILE]`.
pub(super) async fn export(
    g: &Global,
    format: Format,
    all: bool,
    path: Option<&Path>,
) -> Result<u8, CliError> {
    let req = request(Question::Export { all }, format)?;
    // Decided before anything is read: a bad --output is a usage error.
    let target = match path.map(export_target).transpose()? {
        None if format == Format::Parquet => return Err(parquet_needs_a_file(None)),
        None => return ask_to_stdout(g, req, EXPORT_BUFFER).await,
        Some(ExportTarget::Stream(path)) if format == Format::Parquet => {
            return Err(parquet_needs_a_file(Some(&path)))
        }
        Some(t) => t,
    };
    let source = source(g)?;
    match target {
        ExportTarget::Stream(path) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io(format!("cannot open {}", path.display())))?;
            let mut out = std::io::BufWriter::with_capacity(EXPORT_BUFFER, file);
            source.answer(&req, &mut out).await?;
        }
        ExportTarget::Replace { path, mode } => {
            answer_to_file(&source, &req, &path, mode, false).await?;
        }
    }
    source.close_at_exit();
    Ok(exit::SUCCESS)
}

/// `--format parquet` without a file to replace: a Parquet file is only
/// readable once its footer is written, so it is written beside its place
/// and renamed, never streamed (exit 2).
fn parquet_needs_a_file(stream: Option<&Path>) -> CliError {
    CliError::Usage(match stream {
        None => "--format parquet needs --output FILE: a Parquet file is written whole, then renamed into place".into(),
        Some(p) => format!(
            "--output {} is not a regular file: --format parquet writes a file whole, then renames it into place",
            p.display()
        ),
    })
}

/// A temporary file beside `path`, to be renamed over it.
fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile, CliError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(".bbcrawl-export-")
        .tempfile_in(&dir)
        .map_err(io(format!(
            "cannot create a temporary file in {}",
            dir.display()
        )))
}

/// Syncs `tmp`, gives it `mode` and renames it over `path`.
fn put_in_place(tmp: tempfile::NamedTempFile, path: &Path, mode: u32) -> Result<(), CliError> {
    let cannot_write = || io(format!("cannot write {}", path.display()));
    tmp.as_file().sync_all().map_err(cannot_write())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))
            .map_err(cannot_write())?;
    }
    tmp.persist(path).map_err(|e| cannot_write()(e.error))?;
    Ok(())
}

/// Writes the answer to `req` into a temporary file beside `path`, synced
/// and given `mode`, then renamed over `path`: readers see the old file or
/// the new one, never half. With `track`, returns the seq of the last
/// change line written (`export --changes`); a Parquet file returns it
/// anyway.
async fn answer_to_file(
    source: &Source,
    req: &Request,
    path: &Path,
    mode: u32,
    track: bool,
) -> Result<Option<u64>, CliError> {
    let tmp = temp_beside(path)?;
    if req.format() == Format::Parquet {
        let (tmp, last) = source.parquet(req, tmp).await?;
        put_in_place(tmp, path, mode)?;
        return Ok(last);
    }
    let cannot_write = || io(format!("cannot write {}", path.display()));
    let mut out = std::io::BufWriter::with_capacity(EXPORT_BUFFER, tmp);
    let last = if track {
        let mut seqs = SeqTracker::new(&mut out);
        source.answer(req, &mut seqs).await?;
        seqs.last
    } else {
        source.answer(req, &mut out).await?;
        None
    };
    let tmp = out
        .into_inner()
        .map_err(|e| cannot_write()(e.into_error()))?;
    put_in_place(tmp, path, mode)?;
    Ok(last)
}

/// How `export --output PATH` writes.
enum ExportTarget {
    /// A regular file, or a path that does not exist yet: written to a
    /// temporary file beside it and renamed over it. `path` has symbolic
    /// links resolved, so a link stays a link and its target is replaced.
    Replace {
        /// The file to replace or create.
        path: PathBuf,
        /// Its mode: the existing file's, else 0600 (an export holds the
        /// same data as the store, e-mails included).
        mode: u32,
    },
    /// A FIFO, a character device (`/dev/stdout`, `/dev/null`) or a
    /// socket: written into as it is, never replaced.
    Stream(PathBuf),
}

/// Decides how to write `path`; a directory, a block device or a dangling
/// symbolic link is a usage error (exit 2).
fn export_target(path: &Path) -> Result<ExportTarget, CliError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let shown = path.display();
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(ExportTarget::Replace {
            path: std::fs::canonicalize(path).map_err(io(format!("cannot resolve {shown}")))?,
            mode: m.permissions().mode() & 0o7777,
        }),
        Ok(m) if m.is_dir() => Err(CliError::Usage(format!(
            "--output {shown} is a directory; name a file"
        ))),
        Ok(m) if m.file_type().is_block_device() => Err(CliError::Usage(format!(
            "--output {shown} is a block device; refusing to write an export over a disk"
        ))),
        Ok(_) => Ok(ExportTarget::Stream(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(CliError::Usage(format!(
                    "--output {shown} is a symbolic link to nothing; name a file"
                )));
            }
            Ok(ExportTarget::Replace {
                path: path.to_path_buf(),
                mode: 0o600,
            })
        }
        Err(e) => Err(io(format!("cannot use --output {shown}"))(e)),
    }
}

/// `bbcrawl export --changes [--after SEQ | --cursor FILE] [--limit N]
/// [--output FILE] [--format ndjson|parquet]`. The cursor moves only after
/// every line is written and flushed (with --output: synced and renamed
/// into place; Parquet is always a file), to the last seq written: a run
/// that fails or is killed before that leaves it where it was, and the
/// next run prints those changes again (see README, "The change feed").
pub(super) async fn changes(
    g: &Global,
    format: Format,
    after: Option<u64>,
    cursor: Option<&Path>,
    limit: Option<u64>,
    output: Option<&Path>,
) -> Result<u8, CliError> {
    let after = match (after, cursor) {
        (Some(a), _) => a,
        (None, Some(c)) => read_cursor(c)?,
        (None, None) => 0,
    };
    let req = request(
        Question::Changes {
            after,
            limit,
            wait: 0,
        },
        format,
    )?;
    // Decided before anything is read: a bad --output is a usage error.
    let target = output.map(export_target).transpose()?;
    if format == Format::Parquet {
        match &target {
            None => return Err(parquet_needs_a_file(None)),
            Some(ExportTarget::Stream(p)) => return Err(parquet_needs_a_file(Some(p))),
            Some(ExportTarget::Replace { .. }) => {}
        }
    }
    let source = source(g)?;
    let last = match target {
        Some(ExportTarget::Replace { path, mode }) => {
            answer_to_file(&source, &req, &path, mode, true).await?
        }
        stream => {
            let file: Box<dyn std::io::Write> = match stream {
                Some(ExportTarget::Stream(path)) => Box::new(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io(format!("cannot open {}", path.display())))?,
                ),
                _ => Box::new(std::io::stdout().lock()),
            };
            let mut out = std::io::BufWriter::with_capacity(EXPORT_BUFFER, file);
            let mut seqs = SeqTracker::new(&mut out);
            source.answer(&req, &mut seqs).await?;
            seqs.last
        }
    };
    if let (Some(c), Some(last)) = (cursor, last) {
        bbcrawl::store::write_atomically(c, format!("{last}\n").as_bytes(), 0o600)
            .map_err(io(format!("cannot write the cursor {}", c.display())))?;
    }
    Ok(exit::SUCCESS)
}

/// The seq a cursor file holds (missing: 0).
fn read_cursor(path: &Path) -> Result<u64, CliError> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io(format!("cannot read the cursor {}", path.display()))(e)),
        Ok(text) => text.trim().parse().map_err(|_| {
            CliError::Usage(format!(
                "the cursor {} does not hold a sequence number (a whole number): {:?}",
                path.display(),
                bbcrawl::human::truncate(text.trim(), 40)
            ))
        }),
    }
}

/// Passes change lines through, noting the seq of the last whole line.
struct SeqTracker<'a> {
    inner: &'a mut dyn std::io::Write,
    /// The start of the current line (enough to hold its seq).
    head: Vec<u8>,
    last: Option<u64>,
}

impl<'a> SeqTracker<'a> {
    fn new(inner: &'a mut dyn std::io::Write) -> SeqTracker<'a> {
        SeqTracker {
            inner,
            head: Vec::with_capacity(64),
            last: None,
        }
    }

    /// `{"feed":1,"seq":N,…` → N.
    fn seq_of(head: &[u8]) -> Option<u64> {
        let text = std::str::from_utf8(head).ok()?;
        let rest = &text[text.find("\"seq\":")? + 6..];
        let end = rest.find(|c: char| !c.is_ascii_digit())?;
        rest[..end].parse().ok()
    }
}

impl std::io::Write for SeqTracker<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                if let Some(seq) = SeqTracker::seq_of(&self.head) {
                    self.last = Some(seq);
                }
                self.head.clear();
            } else if self.head.len() < 64 {
                self.head.push(b);
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
