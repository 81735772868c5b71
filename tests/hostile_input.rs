//! Hostile input through the real binary (issue 11): stored commit data that
//! would drive the user's terminal, config and secret files that never end
//! or never open, and numbers too large for their key.
//!
//! The hostile commits are written into the store directly: the simulator
//! generates every message from its own word lists, and what is under test
//! is how stored data reaches the user, whichever way it got in.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bbcrawl::record::RepoState;
use bbcrawl::record::{Author, CommitRecord};
use chrono::{DateTime, Utc};

use crate::util::*;

/// Clears the screen, retitles the terminal window and rings the bell; a NUL,
/// an 8-bit CSI and DEL in the subject; a right-to-left override ("Trojan
/// Source") and a tab in the body.
const HOSTILE_MESSAGE: &str = "Fix login \u{1b}[2J\u{1b}]0;pwned\u{7} now\0 \u{9b}31m\u{7f}\n\nBody with \u{202e}evil\u{202c} text\n\tindented line\n";

/// An author name that turns the rest of the line red, and an isolate.
const HOSTILE_NAME: &str = "Mallory \u{1b}[31m\u{2067}";

/// Bytes and characters that must never reach a terminal from stored data.
const FORBIDDEN: [char; 9] = [
    '\u{1b}', '\u{7}', '\0', '\u{9b}', '\u{7f}', '\u{202e}', '\u{202c}', '\u{2067}', '\r',
];

fn hash(first: &str) -> String {
    format!("{first:0<40}")
}

fn record(hash: String, name: &str, email: &str, message: &str) -> CommitRecord {
    CommitRecord {
        workspace: WS.into(),
        repo: "svc".into(),
        repo_uuid: "{r1}".into(),
        branch: "main".into(),
        hash,
        date: DateTime::parse_from_rfc3339("2024-03-01T12:00:00+00:00").unwrap(),
        author: Author {
            raw: Some(format!("{name} <{email}>")),
            name: Some(name.into()),
            email: Some(email.into()),
            uuid: None,
            account_id: None,
            display_name: None,
        },
        committer: None,
        message: message.into(),
        parents: vec![],
        reachable: true,
    }
}

/// A store holding one hostile commit (`deadbeef…`) and one ordinary
/// one (`cafebabe…`); the directory lives as long as the returned guard.
fn hostile_store() -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = fresh_store();
    let store = open_store(&path);
    let repo = RepoState::new(WS, "{r1}", "svc", "acme/svc", Utc::now());
    let ordinary = record(
        hash("cafebabe"),
        "Zoë Ångström",
        "zoe@acme.io",
        "Add Grüße 👋\n\n\tindented with a tab\nSee ISSUE-1234; 详情见工单。\n",
    );
    store
        .apply_page(
            &repo,
            &[
                record(hash("deadbeef"), HOSTILE_NAME, "m@acme.io", HOSTILE_MESSAGE),
                ordinary,
            ],
        )
        .unwrap();
    store.flush().unwrap();
    (dir, path)
}

/// Runs `bbcrawl --store STORE ARGS`, expecting exit 0.
async fn run_ok(store: &Path, args: &[&str]) -> Output {
    let mut all = vec!["--store", store.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = bbcrawl(store.parent().unwrap(), &all, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    o
}

fn assert_terminal_safe(what: &str, out: &str) {
    for c in FORBIDDEN {
        assert!(!out.contains(c), "{what} prints {c:?} raw:\n{out:?}");
    }
}

#[tokio::test]
async fn show_text_neutralises_terminal_escapes_in_messages() {
    let (_dir, store) = hostile_store();
    let o = run_ok(&store, &["show", "deadbeef"]).await;
    let out = stdout(&o);
    assert_terminal_safe("show", &out);
    // Visible, in one documented form, instead of acted upon.
    assert!(
        out.contains(r"    Fix login \u{1b}[2J\u{1b}]0;pwned\u{7} now\u{0} \u{9b}31m\u{7f}"),
        "{out}"
    );
    assert!(out.contains(r"Mallory \u{1b}[31m\u{2067}"), "{out}");
    // The body stays a readable block: its lines and its tab are kept.
    assert!(
        out.contains("\n\n    Body with \\u{202e}evil\\u{202c} text\n    \tindented line\n"),
        "{out}"
    );
}

#[tokio::test]
async fn show_text_of_an_ordinary_commit_is_unchanged() {
    let (_dir, store) = hostile_store();
    let o = run_ok(&store, &["show", "cafebabe"]).await;
    let want = format!(
        "commit:              {}\n\
         workspace:           acme\n\
         repo:                svc\n\
         repo_uuid:           {{r1}}\n\
         branch:              main\n\
         reachable:           true\n\
         date:                2024-03-01T12:00:00+00:00\n\
         author:              Zoë Ångström <zoe@acme.io>\n\
         author_name:         Zoë Ångström\n\
         author_email:        zoe@acme.io\n\
         author_uuid:         -\n\
         author_account_id:   -\n\
         author_display_name: -\n\
         committer:           -\n\
         committer_name:      -\n\
         committer_email:     -\n\
         parents:             -\n\
         \n    Add Grüße 👋\n\n    \tindented with a tab\n    See ISSUE-1234; 详情见工单。\n",
        hash("cafebabe")
    );
    assert_eq!(stdout(&o), want);
}

#[tokio::test]
async fn tables_neutralise_terminal_escapes_and_bidi_overrides() {
    let (_dir, store) = hostile_store();
    for args in [
        &["query", "commits", "--format", "table"][..],
        &["query", "authors", "--format", "table"][..],
    ] {
        let o = run_ok(&store, args).await;
        let out = stdout(&o);
        assert_terminal_safe(&format!("{args:?}"), &out);
        assert!(
            out.contains(r"Mallory \u{1b}[31m\u{2067}"),
            "{args:?}: {out}"
        );
    }
    let o = run_ok(&store, &["query", "commits", "--format", "table"]).await;
    assert!(
        stdout(&o).contains(r"Fix login \u{1b}[2J\u{1b}]0;pwned\u{7} now"),
        "{}",
        stdout(&o)
    );
}

#[tokio::test]
async fn json_and_export_keep_hostile_messages_byte_exact() {
    let (_dir, store) = hostile_store();
    let o = run_ok(&store, &["show", "deadbeef", "--format", "json"]).await;
    let shown: Vec<CommitRecord> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].message, HOSTILE_MESSAGE);
    assert_eq!(shown[0].author.name.as_deref(), Some(HOSTILE_NAME));

    let o = run_ok(&store, &["export"]).await;
    let exported: Vec<CommitRecord> = parse_ndjson(&stdout(&o));
    let hostile = exported
        .iter()
        .find(|r| r.hash == hash("deadbeef"))
        .expect("the hostile commit is exported");
    assert_eq!(hostile.message, HOSTILE_MESSAGE);

    let o = run_ok(&store, &["export", "--format", "csv"]).await;
    let raw = HOSTILE_MESSAGE.as_bytes();
    assert!(
        o.stdout.windows(raw.len()).any(|w| w == raw),
        "csv carries the exact bytes: {}",
        stdout(&o)
    );
}

/// Runs the binary, failing (and killing it) after 10 s: a regression in
/// this module reads a file that never ends or never opens.
async fn bbcrawl_quickly(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::time::timeout(Duration::from_secs(10), bbcrawl(dir, args, env))
        .await
        .unwrap_or_else(|_| panic!("bbcrawl {args:?} {env:?} did not finish within 10 s"))
}

/// Exit 2 with a one-line error naming `path` and `key`.
fn assert_refused(o: &Output, path: &str, key: &str, why: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{path}: {err}");
    assert!(err.contains(path), "names the file {path}: {err}");
    assert!(err.contains(key), "names {key}: {err}");
    assert!(err.contains(why), "says {why:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

const NOT_REGULAR: &str = "not a regular file";
const TOO_LARGE: &str = "larger than 1 MiB";

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// An API nobody serves: should a regression let `verify` get past the
/// configuration, it fails on this machine instead of reaching the network.
const NO_API: (&str, &str) = ("BBCRAWL_API_URL", "http://127.0.0.1:1/2.0");

/// What `verify` needs besides the config file; loading the config fails
/// before any request.
const CREDENTIALS: [(&str, &str); 3] = [
    ("BBCRAWL_WORKSPACES", WS),
    ("BITBUCKET_ACCESS_TOKEN", TOKEN),
    NO_API,
];

#[cfg(unix)]
#[tokio::test]
async fn a_config_that_is_not_a_regular_file_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("bbcrawl.toml");
    mkfifo(&fifo);
    let fifo = fifo.to_str().unwrap();
    let dir_path = dir.path().to_str().unwrap();
    for path in ["/dev/urandom", "/dev/zero", "/dev/stdin", fifo, dir_path] {
        let mut env = CREDENTIALS.to_vec();
        env.push(("BBCRAWL_CONFIG", path));
        let o = bbcrawl_quickly(dir.path(), &["verify"], &env).await;
        assert_refused(&o, path, "BBCRAWL_CONFIG", NOT_REGULAR);
        assert!(stderr(&o).contains("/dev/stdin"), "{}", stderr(&o));
    }
    let o = bbcrawl_quickly(dir.path(), &["verify", "--config", fifo], &CREDENTIALS).await;
    assert_refused(&o, fifo, "--config", NOT_REGULAR);
}

#[tokio::test]
async fn a_config_file_over_1_mib_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bbcrawl.toml");
    // Valid TOML (comments) followed by a valid key: only its size is wrong.
    let mut text = "# 0123456789abc\n".repeat(2 << 20 >> 4);
    text.push_str("requests_per_hour = 77\n");
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();
    let o = bbcrawl_quickly(dir.path(), &["verify", "--config", path], &CREDENTIALS).await;
    assert_refused(&o, path, "--config", TOO_LARGE);
}

#[cfg(unix)]
#[tokio::test]
async fn secret_files_that_are_endless_or_too_large_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big-token");
    std::fs::write(&big, "x".repeat(2 << 20)).unwrap();
    let fifo = dir.path().join("password");
    mkfifo(&fifo);
    let (big, fifo) = (big.to_str().unwrap(), fifo.to_str().unwrap());

    // From the environment.
    for (var, path, why) in [
        ("BITBUCKET_ACCESS_TOKEN_FILE", "/dev/zero", NOT_REGULAR),
        ("BITBUCKET_ACCESS_TOKEN_FILE", fifo, NOT_REGULAR),
        ("BITBUCKET_ACCESS_TOKEN_FILE", big, TOO_LARGE),
    ] {
        let env = [("BBCRAWL_WORKSPACES", WS), NO_API, (var, path)];
        let o = bbcrawl_quickly(dir.path(), &["verify"], &env).await;
        assert_refused(&o, path, var, why);
    }

    // From the config file, one key of each kind.
    let cases = [
        (
            "access_token_file = \"/dev/zero\"",
            "credentials[0].access_token_file",
            "/dev/zero",
            NOT_REGULAR,
        ),
        (
            "username = \"dev@example.com\"\napi_token_file = \"big-token\"",
            "credentials[0].api_token_file",
            big,
            TOO_LARGE,
        ),
        (
            "username = \"jane-bb\"\npassword_file = \"password\"",
            "credentials[0].password_file",
            fifo,
            NOT_REGULAR,
        ),
    ];
    let config = dir.path().join("bbcrawl.toml");
    let config_s = config.to_str().unwrap();
    for (table, key, path, why) in cases {
        std::fs::write(
            &config,
            format!("workspaces = [\"acme\"]\n[[credentials]]\n{table}\n"),
        )
        .unwrap();
        let o = bbcrawl_quickly(dir.path(), &["verify", "--config", config_s], &[NO_API]).await;
        assert_refused(&o, path, key, why);
    }
}

#[tokio::test]
async fn an_integer_above_its_maximum_names_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: Vec<(&'static str, String)>| {
        let dir = dir.path().to_path_buf();
        async move {
            let mut all: Vec<(&str, &str)> = CREDENTIALS.to_vec();
            all.extend(env.iter().map(|(k, v)| (*k, v.as_str())));
            bbcrawl_quickly(&dir, &["verify"], &all).await
        }
    };
    let cases = [
        (
            "BBCRAWL_REQUESTS_PER_HOUR",
            "4294967296",
            "requests_per_hour",
            "must be at most 4294967295 (got 4294967296)",
        ),
        // Beyond any integer type: still "too large", not "not a number".
        (
            "BBCRAWL_REQUESTS_PER_HOUR",
            "99999999999999999999",
            "requests_per_hour",
            "must be at most 4294967295",
        ),
        (
            "BBCRAWL_MAX_IN_FLIGHT",
            "99999999999999999999",
            "max_in_flight",
            "must be between 1 and 1024",
        ),
        (
            "BBCRAWL_INTERVAL_SECONDS",
            "31536001",
            "interval_seconds",
            "must be between 1 and 31536000 (got 31536001)",
        ),
    ];
    for (var, value, key, want) in cases {
        let o = run(vec![(var, value.to_owned())]).await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{var}={value}: {err}");
        assert!(err.contains(key) && err.contains(var), "{err}");
        assert!(err.contains(want), "{var}={value}: {err}");
        assert!(!err.contains("at least"), "{var}={value}: {err}");
    }

    let config = dir.path().join("bbcrawl.toml");
    std::fs::write(&config, "requests_per_hour = 4294967296\n").unwrap();
    let o = run(vec![(
        "BBCRAWL_CONFIG",
        config.to_str().unwrap().to_owned(),
    )])
    .await;
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("requests_per_hour"), "{err}");
    assert!(
        err.contains("must be at most 4294967295 (got 4294967296)"),
        "{err}"
    );
    assert!(!err.contains("at least"), "{err}");
}
