//! Block codecs (issue 13): what it costs to keep commits as **blocks** —
//! one value per stored page, up to 100 commits of one repository in walk
//! order, compressed — in bytes per commit and in write and read time, for
//! each candidate codec.
//!
//! Data: `Simulator::demo` served over loopback; every default-branch page
//! of the first `BBCRAWL_BENCH_CODEC_REPOS` (200) repositories that have
//! commits (about `BBCRAWL_BENCH_CODEC_COMMITS` (500) commits each, ×0.1 to
//! ×3) is fetched `fields`-trimmed and decoded as the crawler decodes it
//! (`Page<Commit>` → `to_record`); each page is one block. A quarter as many
//! further repositories of the same world are held out to train the shared
//! dictionaries (`BBCRAWL_BENCH_CODEC_DICT_BYTES`, 16 KiB), so no block is
//! compressed with a dictionary that has seen it.
//!
//! Two layouts of a block, each under every codec:
//! - `rows`: per commit, the 20-byte hash, a varint length and today's
//!   per-commit value (`store::codec::encode`), concatenated.
//! - `columns`: one postcard struct per block: all hashes, the branch once,
//!   dates as deltas, a per-block author table and an index per commit,
//!   parents as in-block positions where the parent is in the block,
//!   messages last.
//!
//! Codecs: none; `lz4_flex` (pure Rust, default safe features) block (size
//! prepended), frame, block with the zstd-trained dictionary as its window,
//! and block with a *sample* window (64 KiB of raw held-out blocks, a
//! dictionary that needs no trainer); `miniz_oxide` (pure Rust) raw deflate
//! levels 1 and 6; `zstd` (C) levels 1 and 3, and 3 with the trained
//! dictionary (contexts reused across blocks, as a store would). Sizes
//! count every byte of each block's value (lz4's size prefix, frame
//! headers) but not the dictionary, which a store would keep once.
//!
//! Timings are one thread, best of `BBCRAWL_BENCH_CODEC_RUNS` (3):
//! *encode* = serialize + compress every block, *decode* = decompress +
//! deserialize every block back to `StoredCommit`s, *one commit* = the
//! cost of reading a single commit at random (`BBCRAWL_BENCH_CODEC_READS`
//! (20,000) reads): decompress its whole block, then decode that commit
//! alone (`rows`) or the block's columns (`columns`). Every block is checked
//! to round-trip before it is timed.
//!
//! Run: `cargo bench --bench codec`.

#[path = "common/mod.rs"]
mod common;

use std::borrow::Cow;
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bbcrawl::bitbucket::models::{Commit, Page, COMMIT_FIELDS};
use bbcrawl::demo::BackgroundSimulator;
use bbcrawl::record::{parse_raw, Author, CommitRecord, Committer};
use bbcrawl::simulator::{SimCredential, SimOptions, Simulator};
use bbcrawl::store::keys::{hash_hex, parse_hash, Hash, HASH_BYTES};
use bbcrawl::store::{codec, StoredCommit};
use chrono::{FixedOffset, TimeDelta, TimeZone, Utc};
use common::{env_num, get_body, ACCESS_TOKEN, WS};
use serde::{Deserialize, Serialize};

/// One repository's default-branch pages, each decoded as the crawler does.
fn repo_pages(
    rt: &tokio::runtime::Runtime,
    api_url: &str,
    slug: &str,
    uuid: &str,
    branch: &str,
) -> Vec<Vec<CommitRecord>> {
    let fields = url::form_urlencoded::byte_serialize(COMMIT_FIELDS.as_bytes()).collect::<String>();
    let mut next = Some(format!(
        "{api_url}/repositories/{WS}/{slug}/commits/{}?pagelen=100&fields={fields}",
        branch.replace('/', "%2F")
    ));
    let mut pages = Vec::new();
    while let Some(url) = next.take() {
        let body = get_body(rt, &url);
        let page: Page<Commit> = serde_json::from_slice(&body).expect("decode page");
        if !page.values.is_empty() {
            pages.push(
                page.values
                    .iter()
                    .map(|c| c.to_record(WS, slug, uuid, branch))
                    .collect(),
            );
        }
        next = page.next;
    }
    pages
}

/// LEB128, as postcard writes lengths.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The varint at the start of `bytes`, and the rest.
fn take_varint(bytes: &[u8]) -> (u64, &[u8]) {
    let mut v = 0u64;
    for (i, b) in bytes.iter().enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (v, &bytes[i + 1..]);
        }
    }
    panic!("varint cut short");
}

fn hash_bytes(hex: &str) -> Hash {
    parse_hash(hex).expect("40-hex hash")
}

/// `rows`: hash, varint length, `codec::encode` value; per commit.
mod rows {
    use super::*;

    pub fn write(block: &[StoredCommit], out: &mut Vec<u8>) {
        for c in block {
            out.extend_from_slice(&hash_bytes(&c.hash));
            let value = codec::encode(c).expect("encode commit");
            put_varint(out, value.len() as u64);
            out.extend_from_slice(&value);
        }
    }

    /// The next commit's hash and value, and the rest.
    fn next(bytes: &[u8]) -> (&[u8], &[u8], &[u8]) {
        let (hash, rest) = bytes.split_at(HASH_BYTES);
        let (len, rest) = take_varint(rest);
        let (value, rest) = rest.split_at(len as usize);
        (hash, value, rest)
    }

    pub fn read_all(mut bytes: &[u8]) -> Vec<StoredCommit> {
        let mut out = Vec::with_capacity(100);
        while !bytes.is_empty() {
            let (hash, value, rest) = next(bytes);
            out.push(codec::decode(hash, value).expect("decode commit"));
            bytes = rest;
        }
        out
    }

    pub fn read_one(mut bytes: &[u8], k: usize) -> StoredCommit {
        for _ in 0..k {
            bytes = next(bytes).2;
        }
        let (hash, value, _) = next(bytes);
        codec::decode(hash, value).expect("decode commit")
    }
}

/// `columns`: one struct per block, like fields together.
mod columns {
    use super::*;

    /// An author as `DiskCommit` keeps one (names come from `raw`).
    #[derive(Serialize, Deserialize, PartialEq, Clone, Copy)]
    struct BlockAuthor<'a> {
        raw: Option<&'a str>,
        uuid: Option<&'a str>,
        account_id: Option<&'a str>,
        display_name: Option<&'a str>,
    }

    /// As `DiskCommitter`: most commits are committed by their author.
    #[derive(Serialize, Deserialize)]
    enum BlockCommitter<'a> {
        None,
        SameAsAuthor,
        Raw(Option<&'a str>),
    }

    /// A parent: a position in this block (walk order puts most there),
    /// else its hash.
    #[derive(Serialize, Deserialize)]
    enum Parent {
        InBlock(u32),
        Hash(Hash),
    }

    /// Strings are borrowed from the block's bytes when read, so reading
    /// one commit does not copy the other 99 messages.
    #[derive(Serialize, Deserialize)]
    struct Block<'a> {
        hashes: Vec<Hash>,
        /// A page is one walk of one branch.
        branch: &'a str,
        /// The first commit's milliseconds, then each minus the previous.
        date_deltas_ms: Vec<i64>,
        offsets_s: Vec<i32>,
        /// Nanoseconds past the millisecond (almost always 0).
        sub_ms_nanos: Vec<u32>,
        #[serde(borrow)]
        authors: Vec<BlockAuthor<'a>>,
        author: Vec<u32>,
        #[serde(borrow)]
        committer: Vec<BlockCommitter<'a>>,
        parents: Vec<Vec<Parent>>,
        reachable: Vec<bool>,
        unreachable_since_ms: Vec<Option<i64>>,
        #[serde(borrow)]
        messages: Vec<&'a str>,
    }

    pub fn write(block: &[StoredCommit], out: &mut Vec<u8>) {
        let branch = block.first().map_or("", |c| c.branch.as_str());
        assert!(
            block.iter().all(|c| c.branch == branch),
            "one branch a page"
        );
        let hashes: Vec<Hash> = block.iter().map(|c| hash_bytes(&c.hash)).collect();
        let mut authors: Vec<BlockAuthor> = Vec::new();
        let mut author = Vec::with_capacity(block.len());
        let mut prev_ms = 0;
        let mut date_deltas_ms = Vec::with_capacity(block.len());
        for c in block {
            let a = BlockAuthor {
                raw: c.author.raw.as_deref(),
                uuid: c.author.uuid.as_deref(),
                account_id: c.author.account_id.as_deref(),
                display_name: c.author.display_name.as_deref(),
            };
            let i = match authors.iter().position(|x| *x == a) {
                Some(i) => i,
                None => {
                    authors.push(a);
                    authors.len() - 1
                }
            };
            author.push(i as u32);
            let ms = c.date.timestamp_millis();
            date_deltas_ms.push(ms - prev_ms);
            prev_ms = ms;
        }
        let b = Block {
            branch,
            date_deltas_ms,
            offsets_s: block
                .iter()
                .map(|c| c.date.offset().local_minus_utc())
                .collect(),
            sub_ms_nanos: block
                .iter()
                .map(|c| c.date.timestamp_subsec_nanos() % 1_000_000)
                .collect(),
            authors,
            author,
            committer: block
                .iter()
                .map(|c| match &c.committer {
                    None => BlockCommitter::None,
                    Some(x) if x.raw.is_some() && x.raw == c.author.raw => {
                        BlockCommitter::SameAsAuthor
                    }
                    Some(x) => BlockCommitter::Raw(x.raw.as_deref()),
                })
                .collect(),
            parents: block
                .iter()
                .map(|c| {
                    c.parents
                        .iter()
                        .map(|p| {
                            let h = hash_bytes(p);
                            match hashes.iter().position(|x| *x == h) {
                                Some(i) => Parent::InBlock(i as u32),
                                None => Parent::Hash(h),
                            }
                        })
                        .collect()
                })
                .collect(),
            reachable: block.iter().map(|c| c.reachable).collect(),
            unreachable_since_ms: block
                .iter()
                .map(|c| c.unreachable_since.map(|t| t.timestamp_millis()))
                .collect(),
            messages: block.iter().map(|c| c.message.as_str()).collect(),
            hashes,
        };
        postcard::to_io(&b, out).expect("postcard block");
    }

    fn commit(b: &Block, i: usize, ms: i64) -> StoredCommit {
        let offset = FixedOffset::east_opt(b.offsets_s[i]).expect("offset");
        let date = offset
            .timestamp_millis_opt(ms)
            .single()
            .and_then(|d| {
                d.checked_add_signed(TimeDelta::nanoseconds(i64::from(b.sub_ms_nanos[i])))
            })
            .expect("date");
        let owned = |s: Option<&str>| s.map(str::to_owned);
        let a = b.authors[b.author[i] as usize];
        let (name, email) = a.raw.map(parse_raw).unwrap_or((None, None));
        let committer_raw = match b.committer[i] {
            BlockCommitter::None => None,
            BlockCommitter::SameAsAuthor => Some(a.raw),
            BlockCommitter::Raw(raw) => Some(raw),
        };
        let committer = committer_raw.map(|raw| {
            let (name, email) = raw.map(parse_raw).unwrap_or((None, None));
            Committer {
                raw: owned(raw),
                name,
                email,
            }
        });
        StoredCommit {
            branch: b.branch.to_owned(),
            hash: hash_hex(&b.hashes[i]),
            date,
            author: Author {
                raw: owned(a.raw),
                name,
                email,
                uuid: owned(a.uuid),
                account_id: owned(a.account_id),
                display_name: owned(a.display_name),
            },
            committer,
            message: b.messages[i].to_owned(),
            parents: b.parents[i]
                .iter()
                .map(|p| match p {
                    Parent::InBlock(j) => hash_hex(&b.hashes[*j as usize]),
                    Parent::Hash(h) => hash_hex(h),
                })
                .collect(),
            reachable: b.reachable[i],
            unreachable_since: b.unreachable_since_ms[i]
                .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        }
    }

    pub fn read_all(bytes: &[u8]) -> Vec<StoredCommit> {
        let b: Block = postcard::from_bytes(bytes).expect("postcard block");
        let mut ms = 0;
        (0..b.hashes.len())
            .map(|i| {
                ms += b.date_deltas_ms[i];
                commit(&b, i, ms)
            })
            .collect()
    }

    pub fn read_one(bytes: &[u8], k: usize) -> StoredCommit {
        let b: Block = postcard::from_bytes(bytes).expect("postcard block");
        let ms = b.date_deltas_ms[..=k].iter().sum();
        commit(&b, k, ms)
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Layout {
    Rows,
    Columns,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Rows => "rows",
            Layout::Columns => "columns",
        }
    }
    fn write(self, block: &[StoredCommit], out: &mut Vec<u8>) {
        match self {
            Layout::Rows => rows::write(block, out),
            Layout::Columns => columns::write(block, out),
        }
    }
    fn read_all(self, bytes: &[u8]) -> Vec<StoredCommit> {
        match self {
            Layout::Rows => rows::read_all(bytes),
            Layout::Columns => columns::read_all(bytes),
        }
    }
    fn read_one(self, bytes: &[u8], k: usize) -> StoredCommit {
        match self {
            Layout::Rows => rows::read_one(bytes, k),
            Layout::Columns => columns::read_one(bytes, k),
        }
    }
    fn encode(self, block: &[StoredCommit]) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(block, &mut out);
        out
    }
}

/// LZ4's window: a longer dictionary is never looked at.
const LZ4_WINDOW: usize = 64 << 10;

enum Codec {
    None,
    Lz4Block,
    Lz4Frame,
    Lz4Dict(Vec<u8>),
    /// A window of raw held-out blocks: a dictionary needing no trainer.
    Lz4Sample(Vec<u8>),
    Deflate(u8),
    Zstd {
        level: i32,
        dict: bool,
        c: zstd::bulk::Compressor<'static>,
        d: zstd::bulk::Decompressor<'static>,
    },
}

impl Codec {
    fn zstd(level: i32, dict: Option<&[u8]>) -> Codec {
        let (c, d) = match dict {
            Some(dict) => (
                zstd::bulk::Compressor::with_dictionary(level, dict),
                zstd::bulk::Decompressor::with_dictionary(dict),
            ),
            None => (
                zstd::bulk::Compressor::new(level),
                zstd::bulk::Decompressor::new(),
            ),
        };
        Codec::Zstd {
            level,
            dict: dict.is_some(),
            c: c.expect("zstd compressor"),
            d: d.expect("zstd decompressor"),
        }
    }

    /// Every candidate; `dict` trained for this layout, `sample` raw
    /// blocks of it.
    fn all(dict: &[u8], sample: &[u8]) -> Vec<Codec> {
        vec![
            Codec::None,
            Codec::Lz4Block,
            Codec::Lz4Frame,
            Codec::Lz4Dict(dict[dict.len().saturating_sub(LZ4_WINDOW)..].to_vec()),
            Codec::Lz4Sample(sample[sample.len().saturating_sub(LZ4_WINDOW)..].to_vec()),
            Codec::Deflate(1),
            Codec::Deflate(6),
            Codec::zstd(1, None),
            Codec::zstd(3, None),
            Codec::zstd(3, Some(dict)),
        ]
    }

    fn name(&self) -> String {
        match self {
            Codec::None => "none".into(),
            Codec::Lz4Block => "lz4_flex block".into(),
            Codec::Lz4Frame => "lz4_flex frame".into(),
            Codec::Lz4Dict(_) => "lz4_flex block + dict".into(),
            Codec::Lz4Sample(_) => "lz4_flex block + sample".into(),
            Codec::Deflate(l) => format!("miniz_oxide deflate {l}"),
            Codec::Zstd {
                level, dict: true, ..
            } => format!("zstd {level} + dict (C)"),
            Codec::Zstd { level, .. } => format!("zstd {level} (C)"),
        }
    }

    fn compress(&mut self, raw: &[u8]) -> Vec<u8> {
        match self {
            Codec::None => raw.to_vec(),
            Codec::Lz4Block => lz4_flex::block::compress_prepend_size(raw),
            Codec::Lz4Frame => {
                let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
                e.write_all(raw).expect("lz4 frame write");
                e.finish().expect("lz4 frame finish")
            }
            Codec::Lz4Dict(dict) | Codec::Lz4Sample(dict) => {
                lz4_flex::block::compress_prepend_size_with_dict(raw, dict)
            }
            Codec::Deflate(level) => miniz_oxide::deflate::compress_to_vec(raw, *level),
            Codec::Zstd { c, .. } => c.compress(raw).expect("zstd compress"),
        }
    }

    /// The block's bytes (borrowed when stored uncompressed: a store would
    /// decode straight from the value).
    fn decompress<'a>(&mut self, data: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Owned(match self {
            Codec::None => return Cow::Borrowed(data),
            Codec::Lz4Block => {
                lz4_flex::block::decompress_size_prepended(data).expect("lz4 decompress")
            }
            Codec::Lz4Frame => {
                let mut out = Vec::new();
                lz4_flex::frame::FrameDecoder::new(data)
                    .read_to_end(&mut out)
                    .expect("lz4 frame read");
                out
            }
            Codec::Lz4Dict(dict) | Codec::Lz4Sample(dict) => {
                lz4_flex::block::decompress_size_prepended_with_dict(data, dict)
                    .expect("lz4 decompress")
            }
            Codec::Deflate(_) => miniz_oxide::inflate::decompress_to_vec(data).expect("inflate"),
            Codec::Zstd { d, .. } => {
                let cap = zstd::bulk::Decompressor::upper_bound(data).expect("zstd frame size");
                d.decompress(data, cap).expect("zstd decompress")
            }
        })
    }
}

/// One row of the table.
struct Measured {
    layout: Layout,
    codec: String,
    raw_bytes: usize,
    bytes: usize,
    encode: Duration,
    decode: Duration,
    /// The codec alone, on the serialized blocks.
    compress: Duration,
    decompress: Duration,
    one_commit: Duration,
}

fn measure(
    layout: Layout,
    codec: &mut Codec,
    blocks: &[Vec<StoredCommit>],
    reads: &[(usize, usize)],
    runs: usize,
) -> Measured {
    let mut encoded: Vec<Vec<u8>> = Vec::new();
    let mut raw_bytes = 0;
    let mut encode = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let mut out = Vec::with_capacity(blocks.len());
        let mut buf = Vec::new();
        raw_bytes = 0;
        for b in blocks {
            buf.clear();
            layout.write(b, &mut buf);
            raw_bytes += buf.len();
            out.push(codec.compress(&buf));
        }
        encoded = black_box(out);
        encode = encode.min(t.elapsed());
    }
    for (b, e) in blocks.iter().zip(&encoded) {
        assert!(
            layout.read_all(&codec.decompress(e)) == *b,
            "{} {} does not round-trip",
            layout.name(),
            codec.name()
        );
    }
    let mut decode = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        for e in &encoded {
            black_box(layout.read_all(&codec.decompress(e)));
        }
        decode = decode.min(t.elapsed());
    }
    let raw: Vec<Vec<u8>> = blocks.iter().map(|b| layout.encode(b)).collect();
    let mut compress = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        for r in &raw {
            black_box(codec.compress(r));
        }
        compress = compress.min(t.elapsed());
    }
    let mut decompress = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        for e in &encoded {
            black_box(codec.decompress(e));
        }
        decompress = decompress.min(t.elapsed());
    }
    let mut one = Duration::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        for &(b, k) in reads {
            black_box(layout.read_one(&codec.decompress(&encoded[b]), k));
        }
        one = one.min(t.elapsed());
    }
    Measured {
        layout,
        codec: codec.name(),
        raw_bytes,
        bytes: encoded.iter().map(Vec::len).sum(),
        encode,
        decode,
        compress,
        decompress,
        one_commit: one / reads.len().max(1) as u32,
    }
}

/// splitmix64: the random reads are the same in every run.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn main() {
    let repos = env_num("BBCRAWL_BENCH_CODEC_REPOS", 200usize);
    let commits = env_num("BBCRAWL_BENCH_CODEC_COMMITS", 500usize);
    let runs = env_num("BBCRAWL_BENCH_CODEC_RUNS", 3usize).max(1);
    let dict_bytes = env_num("BBCRAWL_BENCH_CODEC_DICT_BYTES", 16usize << 10);
    let n_reads = env_num("BBCRAWL_BENCH_CODEC_READS", 20_000usize);
    let held_out = (repos / 4).max(4);

    // The world, served; `demo` adds special repositories (an empty one, a
    // fork…) after the generated ones, so ask for enough.
    let t = Instant::now();
    let sim = Simulator::demo(SimOptions {
        workspace: WS.into(),
        repos: repos + held_out,
        commits,
        requests_per_hour: 0,
        ..SimOptions::default()
    });
    sim.add_credential(SimCredential::AccessToken {
        token: ACCESS_TOKEN.into(),
        scopes: vec!["repository".into()],
        workspaces: vec![WS.into()],
    });
    let server = BackgroundSimulator::start(sim.clone()).expect("serve simulator");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut measured_pages = Vec::new();
    let mut training_pages = Vec::new();
    let mut taken = 0;
    for r in sim.repos(WS) {
        let Some(branch) = &r.mainbranch else {
            continue;
        };
        let pages = repo_pages(&rt, server.api_url(), &r.slug, &r.uuid, branch);
        if pages.is_empty() {
            continue;
        }
        taken += 1;
        if taken <= repos {
            measured_pages.extend(pages);
        } else {
            training_pages.extend(pages);
        }
    }
    drop(server);
    let n_training: usize = training_pages.iter().map(Vec::len).sum();
    let records: Vec<CommitRecord> = measured_pages.iter().flatten().cloned().collect();
    let blocks: Vec<Vec<StoredCommit>> = measured_pages
        .iter()
        .map(|p| p.iter().map(StoredCommit::from_record).collect())
        .collect();
    let training: Vec<Vec<StoredCommit>> = training_pages
        .iter()
        .map(|p| p.iter().map(StoredCommit::from_record).collect())
        .collect();
    let n = records.len();
    eprintln!(
        "world: {n} commits in {} blocks, {n_training} held out (fetched in {:.1} s)",
        blocks.len(),
        t.elapsed().as_secs_f64()
    );

    // References: NDJSON as `export` prints it, gzip'd whole and per block;
    // today's per-commit value (its hash lives in the key).
    let ndjson_lines: Vec<Vec<u8>> = records
        .iter()
        .map(|r| {
            let mut line = serde_json::to_vec(r).expect("json");
            line.push(b'\n');
            line
        })
        .collect();
    let ndjson: Vec<u8> = ndjson_lines.concat();
    // gzip = deflate + 18 bytes of header and trailer.
    let gzip_whole = miniz_oxide::deflate::compress_to_vec(&ndjson, 6).len() + 18;
    let gzip_blocks: usize = ndjson_lines
        .chunks(100)
        .map(|c| miniz_oxide::deflate::compress_to_vec(&c.concat(), 6).len() + 18)
        .sum();
    let today: usize = blocks
        .iter()
        .flatten()
        .map(|c| codec::encode(c).expect("encode").len())
        .sum();

    let mut state = 0x5eed;
    let reads: Vec<(usize, usize)> = (0..n_reads)
        .map(|_| {
            let b = (next_random(&mut state) % blocks.len() as u64) as usize;
            let k = (next_random(&mut state) % blocks[b].len() as u64) as usize;
            (b, k)
        })
        .collect();

    let mut rows = Vec::new();
    let mut dict_info = Vec::new();
    for layout in [Layout::Rows, Layout::Columns] {
        let samples: Vec<Vec<u8>> = training.iter().map(|b| layout.encode(b)).collect();
        let t = Instant::now();
        let dict = zstd::dict::from_samples(&samples, dict_bytes).expect("train dictionary");
        dict_info.push(format!(
            "{} {} B in {:.1} s",
            layout.name(),
            dict.len(),
            t.elapsed().as_secs_f64()
        ));
        // Every n-th held-out block until the window is full.
        let avg = samples.iter().map(Vec::len).sum::<usize>() / samples.len().max(1);
        let step = (samples.len() * avg / LZ4_WINDOW).max(1);
        let sample: Vec<u8> = samples.iter().step_by(step).flatten().copied().collect();
        for mut codec in Codec::all(&dict, &sample) {
            let m = measure(layout, &mut codec, &blocks, &reads, runs);
            eprintln!("  measured {} {}", layout.name(), m.codec);
            rows.push(m);
        }
    }

    let per = |bytes: usize| bytes as f64 / n as f64;
    println!(
        "== block codecs: {n} commits in {} blocks of ≤ 100 ({repos} repositories of `Simulator::demo`, typical {commits} commits), one thread, best of {runs}",
        blocks.len()
    );
    println!(
        "  NDJSON (export)             {:>6.1} B/commit; gzip -6 whole {:.1} B/commit, per 100-line block {:.1} B/commit",
        per(ndjson.len()),
        per(gzip_whole),
        per(gzip_blocks)
    );
    println!(
        "  today's value (postcard)    {:>6.1} B/commit (+ 25 B key; hash in the key)",
        per(today)
    );
    println!(
        "  dictionaries (zstd-trained on {n_training} held-out commits; not counted below): {}",
        dict_info.join(", ")
    );
    println!(
        "  encode/decode = (de)serialize + codec, commits/s; compress/decompress = the codec alone, MB/s of uncompressed block"
    );
    println!(
        "  {:<8} {:<24} {:>9} {:>6} {:>7} {:>11} {:>11} {:>9} {:>9} {:>11}",
        "layout",
        "codec",
        "B/commit",
        "ratio",
        "÷NDJSON",
        "encode c/s",
        "decode c/s",
        "comp MB/s",
        "dec MB/s",
        "1 commit µs"
    );
    // A copy (or a borrow) is no codec speed: `none` shows a dash.
    let mb_s = |m: &Measured, d: Duration| match m.codec.as_str() {
        "none" => "—".to_owned(),
        _ => format!("{:.0}", m.raw_bytes as f64 / 1e6 / d.as_secs_f64()),
    };
    for m in &rows {
        println!(
            "  {:<8} {:<24} {:>9.1} {:>5.2}× {:>6.1}× {:>11.0} {:>11.0} {:>9} {:>9} {:>11.1}",
            m.layout.name(),
            m.codec,
            per(m.bytes),
            m.raw_bytes as f64 / m.bytes as f64,
            ndjson.len() as f64 / m.bytes as f64,
            n as f64 / m.encode.as_secs_f64(),
            n as f64 / m.decode.as_secs_f64(),
            mb_s(m, m.compress),
            mb_s(m, m.decompress),
            m.one_commit.as_secs_f64() * 1e6
        );
    }
}
