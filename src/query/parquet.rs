//! `export --format parquet` (issue 16 §2): the stored commits, or one
//! batch of the change feed, as a Parquet file of typed columns for a
//! warehouse or a data lake (DuckDB, Spark, Trino…), written with arrow-rs.
//!
//! **The columns** are SPEC section 4's record flattened as `csv` flattens
//! it (`author_raw`, `committer_email`…), with types: `date` is a UTC
//! timestamp in microseconds (what DuckDB, Spark and Trino all read as a
//! timestamp; Spark refuses nanoseconds) plus `date_nanos`, the
//! nanoseconds past that microsecond Bitbucket rarely sends, and
//! `date_offset_minutes`, the offset Bitbucket sent — so the three give
//! back the record's `date` exactly. `parents` is a list of strings. A
//! change-feed file starts with `feed`, `seq` and `kind`, and a repository
//! event is a row with its repository's `workspace`, `repo` and
//! `repo_uuid`, `event_from` / `event_to` (the slugs or default branches
//! before and after), and every commit column null. [`columns`] is the
//! table README shows.
//!
//! **The layout.** Columns with few distinct values (workspace, slug,
//! uuid, branch, the author's and committer's fields, offsets, `kind`) are
//! dictionary-encoded; hashes, messages, parents and dates are not (their
//! dictionaries would overflow and fall back to plain after costing the
//! work). Pages are compressed with Zstandard at level 1: on the query
//! bench's million commits 89 bytes a commit against 141 with Snappy and
//! 148 with LZ4 (both pure Rust), at the same speed (BENCHMARKS.md,
//! "Parquet") — the hex of hashes and parents, half of the file, is
//! incompressible to those two and halved by its entropy coding. It is a C
//! library, but one the build already compiles (`benches/codec.rs`
//! measures it), and every warehouse engine reads it. Row groups hold
//! 131,072 rows (about 12 MB here): DuckDB parallelises a scan by row
//! group and writes 122,880-row groups itself, Spark and Trino split
//! files at row-group boundaries (larger groups would leave a million
//! commits one or two splits), and the writer holds one row group in
//! memory.
//!
//! **The order** is `export --format ndjson`'s: repository by repository
//! (workspace, slug, uuid), each in hash order ([`Store::for_each_sorted`]:
//! straight from the decoded blocks, or for a repository too large to sort
//! in memory, from sorted runs on disk); a change-feed file is in seq order.
//!
//! **From the daemon** the CLI asks for NDJSON and writes the Parquet file
//! itself ([`FromNdjson`]): the API stays text, and the rows are the same.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Int32Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, FixedOffset};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use serde::Deserialize;

use super::output::OutputError;
use super::{export_order, QueryError};
use crate::record::{CommitRecord, RepoState};
use crate::store::block::Columns;
use crate::store::feed::{Change, ChangesError, FEED_VERSION};
use crate::store::{keys, SortedCommit, Store, StoreError, StoredCommit};

/// Rows in a row group (see the module notes).
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Rows gathered before they are handed to the Parquet writer as one
/// Arrow batch (it encodes a batch column by column).
const BATCH_ROWS: usize = 16 * 1024;

/// A repository with more commits than this is sorted through runs on
/// disk, not in memory (its decoded blocks take about 300 bytes a commit).
const SORT_IN_MEMORY: usize = 200_000;

/// How pages are compressed: Zstandard at level 1, parquet's default
/// (see the module notes; level 3 saved 0.3 %, level 6 0.7 %, at 1.2× and
/// 1.5× the time).
fn compression() -> Compression {
    Compression::ZSTD(ZstdLevel::default())
}

/// Which file: every commit, or a batch of the change feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `export --format parquet`: one row per commit.
    Commits,
    /// `export --changes --format parquet`: one row per change.
    Changes,
}

/// One column of a Parquet export, for README's table and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Its name.
    pub name: &'static str,
    /// Its Parquet type, as a reader shows it.
    pub parquet: &'static str,
    /// What it holds.
    pub meaning: &'static str,
}

/// The columns before the commit's, in a change-feed file.
const CHANGE_COLUMNS: [Column; 3] = [
    Column {
        name: "feed",
        parquet: "INT32",
        meaning: "the feed's format version, as in the NDJSON lines",
    },
    Column {
        name: "seq",
        parquet: "INT64",
        meaning: "the change's sequence number (the cursor)",
    },
    Column {
        name: "kind",
        parquet: "STRING",
        meaning: "what happened: `commit_stored`, `commit_unreachable`, `commit_reachable`, `repo_renamed`, `repo_deleted`, `repo_restored`, `repo_default_branch_changed`",
    },
];

/// The commit's columns (SPEC section 4, flattened as `csv` does).
const COMMIT_COLUMNS: [Column; 20] = [
    Column {
        name: "workspace",
        parquet: "STRING",
        meaning: "workspace",
    },
    Column {
        name: "repo",
        parquet: "STRING",
        meaning: "repository slug (the current one)",
    },
    Column {
        name: "repo_uuid",
        parquet: "STRING",
        meaning: "repository uuid, braced",
    },
    Column {
        name: "branch",
        parquet: "STRING",
        meaning: "default branch the commit was found on",
    },
    Column {
        name: "hash",
        parquet: "STRING",
        meaning: "40 hex digits",
    },
    Column {
        name: "date",
        parquet: "TIMESTAMP(MICROS, UTC)",
        meaning: "the commit's instant, to the microsecond",
    },
    Column {
        name: "date_nanos",
        parquet: "INT32",
        meaning: "nanoseconds past `date`'s microsecond, 0 to 999 (0 unless Bitbucket sent more than six digits)",
    },
    Column {
        name: "date_offset_minutes",
        parquet: "INT32",
        meaning: "the UTC offset Bitbucket sent, in minutes (`+02:00` = 120)",
    },
    Column {
        name: "author_raw",
        parquet: "STRING, null",
        meaning: "`Name <email>` as recorded in git",
    },
    Column {
        name: "author_name",
        parquet: "STRING, null",
        meaning: "name parsed from author_raw",
    },
    Column {
        name: "author_email",
        parquet: "STRING, null",
        meaning: "e-mail parsed from author_raw",
    },
    Column {
        name: "author_uuid",
        parquet: "STRING, null",
        meaning: "Bitbucket account uuid, when matched",
    },
    Column {
        name: "author_account_id",
        parquet: "STRING, null",
        meaning: "Atlassian account id, when matched",
    },
    Column {
        name: "author_display_name",
        parquet: "STRING, null",
        meaning: "Bitbucket display name, when matched",
    },
    Column {
        name: "committer_raw",
        parquet: "STRING, null",
        meaning: "the committer's `Name <email>` (null when Bitbucket gave no committer)",
    },
    Column {
        name: "committer_name",
        parquet: "STRING, null",
        meaning: "name parsed from committer_raw",
    },
    Column {
        name: "committer_email",
        parquet: "STRING, null",
        meaning: "e-mail parsed from committer_raw",
    },
    Column {
        name: "message",
        parquet: "STRING",
        meaning: "full message",
    },
    Column {
        name: "parents",
        parquet: "LIST<STRING>",
        meaning: "parent hashes",
    },
    Column {
        name: "reachable",
        parquet: "BOOLEAN",
        meaning: "still reachable from the default branch",
    },
];

/// The columns after the commit's, in a change-feed file.
const EVENT_COLUMNS: [Column; 2] = [
    Column {
        name: "event_from",
        parquet: "STRING, null",
        meaning: "`repo_renamed`: the old slug; `repo_default_branch_changed`: the old branch",
    },
    Column {
        name: "event_to",
        parquet: "STRING, null",
        meaning: "`repo_renamed`: the new slug; `repo_default_branch_changed`: the new branch",
    },
];

/// Columns dictionary-encoded: few distinct values.
const DICTIONARY: [&str; 19] = [
    "feed",
    "kind",
    "workspace",
    "repo",
    "repo_uuid",
    "branch",
    "date_nanos",
    "date_offset_minutes",
    "author_raw",
    "author_name",
    "author_email",
    "author_uuid",
    "author_account_id",
    "author_display_name",
    "committer_raw",
    "committer_name",
    "committer_email",
    "event_from",
    "event_to",
];

/// The columns of `table`, in order.
pub fn columns(table: Table) -> Vec<Column> {
    match table {
        Table::Commits => COMMIT_COLUMNS.to_vec(),
        Table::Changes => CHANGE_COLUMNS
            .iter()
            .chain(&COMMIT_COLUMNS)
            .chain(&EVENT_COLUMNS)
            .copied()
            .collect(),
    }
}

/// The item field of `parents`.
fn parent_field() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Utf8, false))
}

/// The Arrow schema of `table`. In a change-feed file the commit's columns
/// are nullable (a repository event has none), but for its repository's.
fn schema(table: Table) -> SchemaRef {
    let changes = table == Table::Changes;
    let commit = |name: &str, t: DataType, nullable: bool| {
        let repository = matches!(name, "workspace" | "repo" | "repo_uuid");
        Field::new(name, t, nullable || (changes && !repository))
    };
    let text = DataType::Utf8;
    let mut fields = Vec::new();
    if changes {
        fields.push(Field::new("feed", DataType::Int32, false));
        fields.push(Field::new("seq", DataType::Int64, false));
        fields.push(Field::new("kind", text.clone(), false));
    }
    for c in COMMIT_COLUMNS {
        let t = match c.name {
            "date" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            "date_nanos" | "date_offset_minutes" => DataType::Int32,
            "parents" => DataType::List(parent_field()),
            "reachable" => DataType::Boolean,
            _ => text.clone(),
        };
        fields.push(commit(c.name, t, c.parquet.ends_with(", null")));
    }
    if changes {
        for c in EVENT_COLUMNS {
            fields.push(Field::new(c.name, text.clone(), true));
        }
    }
    Arc::new(Schema::new(fields))
}

/// The writer's settings (see the module notes).
fn properties(table: Table) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(compression())
        .set_dictionary_enabled(false)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(format!(
            "bbcrawl {} ({})",
            env!("CARGO_PKG_VERSION"),
            parquet::file::properties::DEFAULT_CREATED_BY
        ))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "bbcrawl.table".to_owned(),
            match table {
                Table::Commits => "commits".to_owned(),
                Table::Changes => format!("changes (feed {FEED_VERSION})"),
            },
        )]));
    for c in DICTIONARY {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c), true);
    }
    b.build()
}

/// A commit's fields, borrowed from wherever it was read.
struct CommitRow<'a> {
    workspace: &'a str,
    repo: &'a str,
    repo_uuid: &'a str,
    branch: &'a str,
    hash: &'a str,
    date: DateTime<FixedOffset>,
    /// raw, name, email, uuid, account_id, display_name.
    author: [Option<&'a str>; 6],
    /// raw, name, email.
    committer: Option<[Option<&'a str>; 3]>,
    message: &'a str,
    reachable: bool,
}

/// A hash as its 40 hex digits, on the stack.
struct HexText([u8; 40]);

impl HexText {
    fn of(hash: &keys::Hash) -> HexText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 40];
        for (k, b) in hash.iter().enumerate() {
            text[2 * k] = HEX[(b >> 4) as usize];
            text[2 * k + 1] = HEX[(b & 15) as usize];
        }
        HexText(text)
    }
}

impl AsRef<str> for HexText {
    fn as_ref(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// The rows of the batch being gathered, column by column.
struct Builders {
    table: Table,
    rows: usize,
    feed: Int32Builder,
    seq: Int64Builder,
    kind: StringBuilder,
    workspace: StringBuilder,
    repo: StringBuilder,
    repo_uuid: StringBuilder,
    branch: StringBuilder,
    hash: StringBuilder,
    date: TimestampMicrosecondBuilder,
    date_nanos: Int32Builder,
    date_offset_minutes: Int32Builder,
    author: [StringBuilder; 6],
    committer: [StringBuilder; 3],
    message: StringBuilder,
    parents: ListBuilder<StringBuilder>,
    reachable: BooleanBuilder,
    event_from: StringBuilder,
    event_to: StringBuilder,
}

impl Builders {
    fn new(table: Table) -> Builders {
        Builders {
            table,
            rows: 0,
            feed: Int32Builder::new(),
            seq: Int64Builder::new(),
            kind: StringBuilder::new(),
            workspace: StringBuilder::new(),
            repo: StringBuilder::new(),
            repo_uuid: StringBuilder::new(),
            branch: StringBuilder::new(),
            hash: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 40),
            date: TimestampMicrosecondBuilder::with_capacity(BATCH_ROWS).with_timezone("UTC"),
            date_nanos: Int32Builder::new(),
            date_offset_minutes: Int32Builder::new(),
            author: Default::default(),
            committer: Default::default(),
            message: StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 128),
            parents: ListBuilder::new(StringBuilder::new()).with_field(parent_field()),
            reachable: BooleanBuilder::new(),
            event_from: StringBuilder::new(),
            event_to: StringBuilder::new(),
        }
    }

    /// A change's first columns.
    fn change(&mut self, seq: u64, kind: &str) {
        self.feed.append_value(FEED_VERSION as i32);
        self.seq
            .append_value(i64::try_from(seq).unwrap_or(i64::MAX));
        self.kind.append_value(kind);
    }

    /// A commit's columns (and, in a change-feed file, no event).
    fn commit<P: AsRef<str>>(&mut self, c: &CommitRow<'_>, parents: impl Iterator<Item = P>) {
        self.workspace.append_value(c.workspace);
        self.repo.append_value(c.repo);
        self.repo_uuid.append_value(c.repo_uuid);
        self.branch.append_value(c.branch);
        self.hash.append_value(c.hash);
        let micros = c.date.timestamp_micros();
        self.date.append_value(micros);
        self.date_nanos
            .append_value((c.date.timestamp_subsec_nanos() % 1000) as i32);
        self.date_offset_minutes
            .append_value(c.date.offset().local_minus_utc() / 60);
        for (b, v) in self.author.iter_mut().zip(c.author) {
            b.append_option(v);
        }
        match c.committer {
            Some(fields) => {
                for (b, v) in self.committer.iter_mut().zip(fields) {
                    b.append_option(v);
                }
            }
            None => {
                for b in &mut self.committer {
                    b.append_null();
                }
            }
        }
        self.message.append_value(c.message);
        for p in parents {
            self.parents.values().append_value(p);
        }
        self.parents.append(true);
        self.reachable.append_value(c.reachable);
        if self.table == Table::Changes {
            self.event_from.append_null();
            self.event_to.append_null();
        }
        self.rows += 1;
    }

    /// A repository event's row: its repository, no commit.
    fn event(&mut self, repo: &RepoRef<'_>, from: Option<&str>, to: Option<&str>) {
        self.workspace.append_value(repo.workspace);
        self.repo.append_value(repo.slug);
        self.repo_uuid.append_value(repo.uuid);
        self.branch.append_null();
        self.hash.append_null();
        self.date.append_null();
        self.date_nanos.append_null();
        self.date_offset_minutes.append_null();
        for b in self.author.iter_mut().chain(&mut self.committer) {
            b.append_null();
        }
        self.message.append_null();
        self.parents.append_null();
        self.reachable.append_null();
        self.event_from.append_option(from);
        self.event_to.append_option(to);
        self.rows += 1;
    }

    /// Commit `i` of a block, of repository `repo`.
    fn block_commit(&mut self, cols: &Columns, i: usize, repo: &RepoState) {
        let v = cols.view(i);
        let hash = HexText::of(v.hash);
        let committer = v
            .committer
            .as_ref()
            .map(|c| [c.raw, c.name.as_deref(), c.email.as_deref()]);
        let row = CommitRow {
            workspace: &repo.workspace,
            repo: &repo.slug,
            repo_uuid: &repo.uuid,
            branch: v.branch,
            hash: hash.as_ref(),
            date: v.date,
            author: [
                v.author.raw,
                v.author.name.as_deref(),
                v.author.email.as_deref(),
                v.author_uuid,
                v.author_account_id,
                v.author_display_name,
            ],
            committer,
            message: v.message,
            reachable: v.reachable,
        };
        self.commit(&row, cols.parent_hashes(i).map(|h| HexText::of(&h)));
    }

    /// A commit as a record holds it.
    fn record(&mut self, c: &CommitRecord) {
        let row = CommitRow {
            workspace: &c.workspace,
            repo: &c.repo,
            repo_uuid: &c.repo_uuid,
            branch: &c.branch,
            hash: &c.hash,
            date: c.date,
            author: author_fields(&c.author),
            committer: committer_fields(c.committer.as_ref()),
            message: &c.message,
            reachable: c.reachable,
        };
        self.commit(&row, c.parents.iter());
    }

    /// A stored commit of repository `repo`.
    fn stored(&mut self, c: &StoredCommit, repo: &RepoState) {
        let row = CommitRow {
            workspace: &repo.workspace,
            repo: &repo.slug,
            repo_uuid: &repo.uuid,
            branch: &c.branch,
            hash: &c.hash,
            date: c.date,
            author: author_fields(&c.author),
            committer: committer_fields(c.committer.as_ref()),
            message: &c.message,
            reachable: c.reachable,
        };
        self.commit(&row, c.parents.iter());
    }

    /// The gathered rows as one batch; the builders start empty again.
    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, OutputError> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        if self.table == Table::Changes {
            arrays.push(Arc::new(self.feed.finish()));
            arrays.push(Arc::new(self.seq.finish()));
            arrays.push(Arc::new(self.kind.finish()));
        }
        arrays.push(Arc::new(self.workspace.finish()));
        arrays.push(Arc::new(self.repo.finish()));
        arrays.push(Arc::new(self.repo_uuid.finish()));
        arrays.push(Arc::new(self.branch.finish()));
        arrays.push(Arc::new(self.hash.finish()));
        arrays.push(Arc::new(self.date.finish()));
        arrays.push(Arc::new(self.date_nanos.finish()));
        arrays.push(Arc::new(self.date_offset_minutes.finish()));
        for b in self.author.iter_mut().chain(&mut self.committer) {
            arrays.push(Arc::new(b.finish()));
        }
        arrays.push(Arc::new(self.message.finish()));
        arrays.push(Arc::new(self.parents.finish()));
        arrays.push(Arc::new(self.reachable.finish()));
        if self.table == Table::Changes {
            arrays.push(Arc::new(self.event_from.finish()));
            arrays.push(Arc::new(self.event_to.finish()));
        }
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), arrays).map_err(|e| {
            OutputError::Io(std::io::Error::other(format!(
                "a Parquet batch does not fit its schema: {e}"
            )))
        })
    }
}

/// An author's six fields.
fn author_fields(a: &crate::record::Author) -> [Option<&str>; 6] {
    [
        a.raw.as_deref(),
        a.name.as_deref(),
        a.email.as_deref(),
        a.uuid.as_deref(),
        a.account_id.as_deref(),
        a.display_name.as_deref(),
    ]
}

/// A committer's columns: raw, name, email.
fn committer_fields(c: Option<&crate::record::Committer>) -> Option<[Option<&str>; 3]> {
    c.map(|x| [x.raw.as_deref(), x.name.as_deref(), x.email.as_deref()])
}

/// A repository as an event names it.
struct RepoRef<'a> {
    workspace: &'a str,
    uuid: &'a str,
    slug: &'a str,
}

/// A Parquet writer's failure: an I/O error as itself (a full disk), the
/// rest as an I/O error saying so.
fn parquet_err(e: ParquetError) -> OutputError {
    match e {
        ParquetError::External(inner) => match inner.downcast::<std::io::Error>() {
            Ok(io) => OutputError::Io(*io),
            Err(other) => OutputError::Io(std::io::Error::other(format!("Parquet: {other}"))),
        },
        other => OutputError::Io(std::io::Error::other(format!("Parquet: {other}"))),
    }
}

/// A Parquet file being written: rows go in, in order; [`ParquetFile::finish`]
/// writes the rest and the footer.
pub struct ParquetFile<W: Write + Send> {
    writer: ArrowWriter<W>,
    schema: SchemaRef,
    rows: Builders,
    written: u64,
}

impl<W: Write + Send> ParquetFile<W> {
    /// A file of `table` written into `out` (buffered by the writer).
    pub fn new(out: W, table: Table) -> Result<ParquetFile<W>, OutputError> {
        let schema = schema(table);
        let writer = ArrowWriter::try_new(out, schema.clone(), Some(properties(table)))
            .map_err(parquet_err)?;
        Ok(ParquetFile {
            writer,
            schema,
            rows: Builders::new(table),
            written: 0,
        })
    }

    /// Hands a full batch to the writer.
    fn row_done(&mut self) -> Result<(), OutputError> {
        self.written += 1;
        if self.rows.rows >= BATCH_ROWS {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), OutputError> {
        if self.rows.rows == 0 {
            return Ok(());
        }
        let batch = self.rows.finish(&self.schema)?;
        self.writer.write(&batch).map_err(parquet_err)
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.written
    }

    /// Writes the last rows and the footer; returns the output.
    pub fn finish(mut self) -> Result<W, OutputError> {
        self.flush_batch()?;
        self.writer.into_inner().map_err(parquet_err)
    }

    /// A commit (`Table::Commits`).
    pub fn record(&mut self, c: &CommitRecord) -> Result<(), OutputError> {
        self.rows.record(c);
        self.row_done()
    }

    /// A change as [`Store::for_each_change`] hands it over
    /// (`Table::Changes`).
    fn change(&mut self, change: Change<'_>) -> Result<(), OutputError> {
        match change {
            Change::Commit {
                seq,
                kind,
                block,
                slot,
                repo,
            } => {
                self.rows.change(seq, kind);
                self.rows.block_commit(block, slot, repo);
            }
            Change::Repo {
                seq,
                kind,
                repo,
                from,
                to,
            } => {
                self.rows.change(seq, kind);
                let r = RepoRef {
                    workspace: &repo.workspace,
                    uuid: &repo.uuid,
                    slug: &repo.slug,
                };
                self.rows.event(&r, from, to);
            }
        }
        self.row_done()
    }

    /// A change line of the daemon's NDJSON (`Table::Changes`).
    fn change_line(&mut self, line: &ChangeLine) -> Result<(), OutputError> {
        self.rows.change(line.seq, &line.kind);
        match (&line.commit, &line.repository) {
            (Some(c), _) => self.rows.record(c),
            (None, Some(r)) => self.rows.event(
                &RepoRef {
                    workspace: &r.workspace,
                    uuid: &r.uuid,
                    slug: &r.slug,
                },
                line.from.as_deref(),
                line.to.as_deref(),
            ),
            (None, None) => {
                return Err(bad_line(format!(
                    "change {} has neither a commit nor a repository",
                    line.seq
                )))
            }
        }
        self.row_done()
    }
}

/// `export --format parquet [--all]` from the store: every commit
/// (reachable ones unless `all`) in export order; returns the rows written.
pub fn export<W: Write + Send>(store: &Store, all: bool, out: W) -> Result<(W, u64), OutputError> {
    export_sorting(store, all, SORT_IN_MEMORY, out)
}

/// [`export`], sorting repositories of at most `in_memory` commits in
/// memory.
fn export_sorting<W: Write + Send>(
    store: &Store,
    all: bool,
    in_memory: usize,
    out: W,
) -> Result<(W, u64), OutputError> {
    let mut file = ParquetFile::new(out, Table::Commits)?;
    for repo in export_order(store)? {
        store
            .for_each_sorted(repo.id, all, in_memory, &mut |c| {
                match c {
                    SortedCommit::Slot(cols, i) => file.rows.block_commit(cols, i, &repo),
                    SortedCommit::Stored(c) => file.rows.stored(c, &repo),
                }
                file.row_done().map_err(ExportError::Output)?;
                Ok::<bool, ExportError>(true)
            })
            .map_err(|e| match e {
                ExportError::Store(e) => OutputError::Query(QueryError::Store(e)),
                ExportError::Output(e) => e,
            })?;
    }
    let rows = file.rows();
    Ok((file.finish()?, rows))
}

/// Reading the store or writing the file failed.
enum ExportError {
    Store(StoreError),
    Output(OutputError),
}

impl From<StoreError> for ExportError {
    fn from(e: StoreError) -> ExportError {
        ExportError::Store(e)
    }
}

/// `export --changes --format parquet`: the changes after `after` (at most
/// `limit`) from the store, in seq order; returns the output and the last
/// seq written.
pub fn changes<W: Write + Send>(
    store: &Store,
    after: u64,
    limit: Option<u64>,
    out: W,
) -> Result<(W, Option<u64>), OutputError> {
    let mut file = ParquetFile::new(out, Table::Changes)?;
    let last = store
        .for_each_change(after, limit, &mut |c| {
            file.change(c).map_err(|e| match e {
                OutputError::Io(io) => ChangesError::Io(io),
                OutputError::Query(QueryError::Store(s)) => ChangesError::Store(s),
                other => ChangesError::Io(std::io::Error::other(other.to_string())),
            })
        })
        .map_err(|e| match e {
            ChangesError::Store(e) => OutputError::Query(e.into()),
            ChangesError::Io(e) => OutputError::Io(e),
        })?;
    Ok((file.finish()?, last))
}

/// A line of the daemon's change feed (`GET /api/v1/changes`).
#[derive(Deserialize)]
struct ChangeLine {
    feed: u32,
    seq: u64,
    kind: String,
    #[serde(default)]
    commit: Option<CommitRecord>,
    #[serde(default)]
    repository: Option<RepoLine>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
}

/// The repository of a change line.
#[derive(Deserialize)]
struct RepoLine {
    workspace: String,
    uuid: String,
    slug: String,
}

fn bad_line(message: String) -> OutputError {
    OutputError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("an unreadable line from the daemon: {message}"),
    ))
}

/// The Parquet file of the NDJSON the daemon sends (`export` records or
/// change lines), as bytes are written into it: a daemon's answer becomes
/// the same file the store would have given.
pub struct FromNdjson<W: Write + Send> {
    file: ParquetFile<W>,
    table: Table,
    line: Vec<u8>,
    last_seq: Option<u64>,
}

impl<W: Write + Send> FromNdjson<W> {
    /// A file of `table` written into `out`.
    pub fn new(out: W, table: Table) -> Result<FromNdjson<W>, OutputError> {
        Ok(FromNdjson {
            file: ParquetFile::new(out, table)?,
            table,
            line: Vec::new(),
            last_seq: None,
        })
    }

    fn take_line(&mut self) -> Result<(), OutputError> {
        let line = std::mem::take(&mut self.line);
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match self.table {
            Table::Commits => {
                let c: CommitRecord =
                    serde_json::from_slice(&line).map_err(|e| bad_line(e.to_string()))?;
                self.file.record(&c)?;
            }
            Table::Changes => {
                let c: ChangeLine =
                    serde_json::from_slice(&line).map_err(|e| bad_line(e.to_string()))?;
                if c.feed != FEED_VERSION {
                    return Err(bad_line(format!(
                        "feed version {} (this bbcrawl reads {FEED_VERSION})",
                        c.feed
                    )));
                }
                self.file.change_line(&c)?;
                self.last_seq = Some(c.seq);
            }
        }
        self.line = line;
        self.line.clear();
        Ok(())
    }

    /// Writes the last rows and the footer; returns the output and, for
    /// change lines, the last seq written. A last line cut short is an
    /// error: the daemon's answer ended early.
    pub fn finish(self) -> Result<(W, Option<u64>), OutputError> {
        if !self.line.is_empty() {
            return Err(bad_line("the answer ended in the middle of a line".into()));
        }
        let last = self.last_seq;
        Ok((self.file.finish()?, last))
    }
}

impl<W: Write + Send> Write for FromNdjson<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let into_io = |e: OutputError| match e {
            OutputError::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        };
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..end]);
            self.take_line().map_err(into_io)?;
            rest = &rest[end + 1..];
        }
        self.line.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{Format, Question, Request};
    use crate::record::{Author, Committer};
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
    use arrow_array::Array;
    use chrono::{TimeZone, Utc};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    /// Dates of every kind a store keeps: sub-microsecond, pre-1970,
    /// offsets east and west and of half hours and 45 minutes.
    const DATES: [&str; 6] = [
        "2024-05-01T11:37:07.123+02:00",
        "2024-05-01T11:37:07.123456789+02:00",
        "1969-12-31T23:59:59.999999500+00:00",
        "2024-05-01T11:37:07-07:00",
        "2030-01-01T00:00:00+05:30",
        "2021-03-04T05:06:07.5-09:45",
    ];

    fn record(repo: &RepoState, i: usize) -> CommitRecord {
        let raws = [
            None,
            Some("Ünïcødé \"quoted\" <a\\b@x>"),
            Some("no email"),
            Some("<only@mail>"),
            Some("Dev Three <dev3@x.io>"),
        ];
        let raw = raws[i % raws.len()].map(str::to_owned);
        let (name, email) = raw
            .as_deref()
            .map(crate::record::parse_raw)
            .unwrap_or((None, None));
        let matched = i.is_multiple_of(3);
        let committer = match i % 4 {
            0 => None,
            1 => Some(Committer {
                raw: raw.clone(),
                name: name.clone(),
                email: email.clone(),
            }),
            _ => Some(Committer {
                raw: Some("CI Bot <ci@x.io>".into()),
                name: Some("CI Bot".into()),
                email: Some("ci@x.io".into()),
            }),
        };
        let parents = match i % 5 {
            0 => vec![],
            1 => vec![format!("{:040x}", 0xdead_0000u64 + i as u64)],
            _ => vec![
                format!("{:040x}", i * 7919 + repo.slug.len() + 7919),
                format!("{:040x}", 0xbeef_0000u64 + i as u64),
            ],
        };
        CommitRecord {
            workspace: repo.workspace.clone(),
            repo: repo.slug.clone(),
            repo_uuid: repo.uuid.clone(),
            branch: if i.is_multiple_of(7) {
                "master"
            } else {
                "main"
            }
            .into(),
            hash: format!("{:040x}", i * 7919 + repo.slug.len()),
            date: DateTime::parse_from_rfc3339(DATES[i % DATES.len()]).unwrap()
                + chrono::Duration::minutes(i as i64),
            author: Author {
                raw,
                name,
                email,
                uuid: matched.then(|| format!("{{u{}}}", i % 4)),
                account_id: matched.then(|| "557058:x".into()),
                display_name: matched.then(|| "Dev \u{202e}".into()),
            },
            committer,
            message: format!("change \"{i}\"\n\nbody é \u{0}"),
            parents,
            reachable: true,
        }
    }

    /// A store of repositories of 0, 1 and many commits, one with
    /// commits a force push orphaned.
    fn store() -> (tempfile::TempDir, Store) {
        crate::query::test_store(&[(0, "m"), (450, "b"), (1, "z"), (120, "k")], record)
    }

    fn read(bytes: Vec<u8>) -> Vec<RecordBatch> {
        ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes))
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap())
            .collect()
    }

    fn text(b: &RecordBatch, name: &str, i: usize) -> Option<String> {
        let a = b.column_by_name(name).unwrap().as_string::<i32>();
        a.is_valid(i).then(|| a.value(i).to_owned())
    }

    fn int(b: &RecordBatch, name: &str, i: usize) -> i32 {
        b.column_by_name(name)
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(i)
    }

    /// The records a commits file holds, in its order.
    fn records_of(batches: &[RecordBatch]) -> Vec<CommitRecord> {
        let mut out = Vec::new();
        for b in batches {
            for i in 0..b.num_rows() {
                let micros = b
                    .column_by_name("date")
                    .unwrap()
                    .as_primitive::<TimestampMicrosecondType>()
                    .value(i);
                let offset = FixedOffset::east_opt(int(b, "date_offset_minutes", i) * 60).unwrap();
                let date = Utc.timestamp_micros(micros).unwrap().with_timezone(&offset)
                    + chrono::Duration::nanoseconds(i64::from(int(b, "date_nanos", i)));
                let committer = text(b, "committer_raw", i)
                    .or(text(b, "committer_name", i))
                    .or(text(b, "committer_email", i))
                    .map(|_| Committer {
                        raw: text(b, "committer_raw", i),
                        name: text(b, "committer_name", i),
                        email: text(b, "committer_email", i),
                    });
                let parents = b
                    .column_by_name("parents")
                    .unwrap()
                    .as_list::<i32>()
                    .value(i);
                let parents = parents.as_string::<i32>();
                out.push(CommitRecord {
                    workspace: text(b, "workspace", i).unwrap(),
                    repo: text(b, "repo", i).unwrap(),
                    repo_uuid: text(b, "repo_uuid", i).unwrap(),
                    branch: text(b, "branch", i).unwrap(),
                    hash: text(b, "hash", i).unwrap(),
                    date,
                    author: Author {
                        raw: text(b, "author_raw", i),
                        name: text(b, "author_name", i),
                        email: text(b, "author_email", i),
                        uuid: text(b, "author_uuid", i),
                        account_id: text(b, "author_account_id", i),
                        display_name: text(b, "author_display_name", i),
                    },
                    committer,
                    message: text(b, "message", i).unwrap(),
                    parents: (0..parents.len())
                        .map(|k| parents.value(k).to_owned())
                        .collect(),
                    reachable: b.column_by_name("reachable").unwrap().as_boolean().value(i),
                });
            }
        }
        out
    }

    /// The NDJSON `export` prints.
    fn ndjson(store: &Store, question: Question) -> Vec<u8> {
        let mut out = Vec::new();
        let req = Request::new(question, Format::Ndjson, 80).unwrap();
        crate::query::answer(store, &req, &mut out).unwrap();
        out
    }

    /// The documented columns are the file's, in order, nullable where
    /// documented (in a change-feed file, every commit column but its
    /// repository's).
    #[test]
    fn the_documented_columns_are_the_schema() {
        for table in [Table::Commits, Table::Changes] {
            let schema = schema(table);
            let documented = columns(table);
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let want: Vec<&str> = documented.iter().map(|c| c.name).collect();
            assert_eq!(names, want);
            for (f, c) in schema.fields().iter().zip(&documented) {
                let null = c.parquet.ends_with(", null")
                    || (table == Table::Changes
                        && COMMIT_COLUMNS.iter().any(|k| k.name == c.name)
                        && !matches!(c.name, "workspace" | "repo" | "repo_uuid"));
                assert_eq!(f.is_nullable(), null, "{table:?} {}", c.name);
            }
        }
    }

    /// Every field of every commit, in export order, whether read from
    /// blocks sorted in memory, from sorted runs, or from the NDJSON a
    /// daemon sends: the same file, and the same records as `export`.
    #[test]
    fn every_path_writes_the_records_export_prints() {
        let (_dir, store) = store();
        for all in [false, true] {
            // A committer given without an identity reads back as none
            // (three nulls, as in `csv`).
            let expected: Vec<CommitRecord> = crate::query::export(&store, all)
                .unwrap()
                .map(|r| {
                    let mut r = r.unwrap();
                    if r.committer.as_ref().is_some_and(|c| c.raw.is_none()) {
                        r.committer = None;
                    }
                    r
                })
                .collect();
            assert_eq!(expected.len(), if all { 571 } else { 452 });
            let (from_blocks, rows) = export_sorting(&store, all, usize::MAX, Vec::new()).unwrap();
            assert_eq!(rows, expected.len() as u64);
            let (from_runs, _) = export_sorting(&store, all, 0, Vec::new()).unwrap();
            let mut from_ndjson = FromNdjson::new(Vec::new(), Table::Commits).unwrap();
            from_ndjson
                .write_all(&ndjson(&store, Question::Export { all }))
                .unwrap();
            let (from_ndjson, _) = from_ndjson.finish().unwrap();
            let batches = read(from_blocks.clone());
            assert_eq!(read(from_runs.clone()), batches, "runs, all {all}");
            assert_eq!(read(from_ndjson.clone()), batches, "ndjson, all {all}");
            assert!(from_blocks == from_runs && from_blocks == from_ndjson);
            let got = records_of(&batches);
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert_eq!(g, e);
                assert_eq!(
                    crate::record::format_date(&g.date),
                    crate::record::format_date(&e.date)
                );
            }
        }
    }

    /// A change-feed file: seq and kind per row, in seq order, commits as
    /// `export` prints them, a repository event with its repository and
    /// nothing of a commit; from the store or from the daemon's lines, the
    /// same file; an empty batch is a file of no rows.
    #[test]
    fn a_change_feed_file_has_a_row_per_change() {
        let (_dir, store) = store();
        let mut repo = store
            .repos()
            .unwrap()
            .into_iter()
            .find(|r| r.slug == "z")
            .unwrap();
        repo.events.push(crate::record::RepoEvent {
            at: Utc::now(),
            kind: crate::record::RepoEventKind::Renamed {
                from: "z".into(),
                to: "zz".into(),
            },
        });
        repo.slug = "zz".into();
        store.put_repo(&repo).unwrap();
        store.flush().unwrap();
        let head = store.feed_durable();
        // Every commit stored, 119 unreachable, one rename.
        assert_eq!(head, 571 + 119 + 1);
        let (local, last) = changes(&store, 3, None, Vec::new()).unwrap();
        assert_eq!(last, Some(head));
        let mut remote = FromNdjson::new(Vec::new(), Table::Changes).unwrap();
        remote
            .write_all(&ndjson(
                &store,
                Question::Changes {
                    after: 3,
                    limit: None,
                    wait: 0,
                },
            ))
            .unwrap();
        let (remote, remote_last) = remote.finish().unwrap();
        assert_eq!(remote_last, last);
        assert!(local == remote, "the daemon's lines make the same file");
        let batches = read(local);
        let lines: Vec<serde_json::Value> = String::from_utf8(ndjson(
            &store,
            Question::Changes {
                after: 3,
                limit: None,
                wait: 0,
            },
        ))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
        let mut k = 0;
        for b in &batches {
            let seqs = b.column_by_name("seq").unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let line = &lines[k];
                assert_eq!(seqs.value(i), line["seq"].as_i64().unwrap());
                assert_eq!(int(b, "feed", i), 1);
                assert_eq!(text(b, "kind", i).as_deref(), line["kind"].as_str());
                match line.get("commit") {
                    Some(c) => {
                        assert_eq!(text(b, "hash", i).as_deref(), c["hash"].as_str());
                        assert_eq!(text(b, "repo", i).as_deref(), c["repo"].as_str());
                        assert_eq!(text(b, "event_from", i), None);
                    }
                    None => {
                        assert_eq!(text(b, "repo", i).as_deref(), Some("zz"));
                        assert_eq!(text(b, "event_from", i).as_deref(), Some("z"));
                        assert_eq!(text(b, "event_to", i).as_deref(), Some("zz"));
                        for c in ["branch", "hash", "message", "author_raw"] {
                            assert_eq!(text(b, c, i), None, "{c}");
                        }
                        for c in ["date", "date_nanos", "parents", "reachable"] {
                            assert!(b.column_by_name(c).unwrap().is_null(i), "{c}");
                        }
                    }
                }
                k += 1;
            }
        }
        assert_eq!(k, lines.len());
        assert_eq!(k as u64, head - 3);
        let (limited, last) = changes(&store, 3, Some(5), Vec::new()).unwrap();
        assert_eq!(last, Some(8));
        assert_eq!(read(limited).iter().map(|b| b.num_rows()).sum::<usize>(), 5);
        let (empty, last) = changes(&store, head, None, Vec::new()).unwrap();
        assert_eq!(last, None);
        assert_eq!(read(empty).iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    }
}
