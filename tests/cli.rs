//! The command line as a user meets it: help, configuration errors and
//! their exit code, `simulate`.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::util::*;

#[tokio::test]
async fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["--help"],
        vec!["verify", "--help"],
        vec!["demo", "--help"],
        vec!["simulate", "--help"],
    ] {
        let o = bbcrawl(dir.path(), &args, &[]).await;
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        assert!(stdout(&o).contains("Usage:"), "{args:?}: {}", stdout(&o));
    }
}

#[tokio::test]
async fn a_bad_value_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("BBCRAWL_REQUESTS_PER_HOUR", "0", "requests_per_hour"),
        ("BBCRAWL_API_URL", "http://example.com/2.0", "api_url"),
        ("BBCRAWL_MAX_IN_FLIGHT", "lots", "max_in_flight"),
        ("BBCRAWL_SINCE", "yesterday", "since"),
    ];
    for (var, value, key) in cases {
        let env = [
            ("BBCRAWL_WORKSPACES", "acme"),
            ("BITBUCKET_ACCESS_TOKEN", TOKEN),
            (var, value),
        ];
        let o = bbcrawl(dir.path(), &["verify"], &env).await;
        assert_eq!(o.status.code(), Some(2), "{var}: {}", stderr(&o));
        assert!(stderr(&o).contains(key), "{var}: {}", stderr(&o));
        assert!(!stderr(&o).contains(TOKEN));
    }
    // A usage error from clap itself is exit 2 as well.
    let o = bbcrawl(dir.path(), &["verify", "--format", "yaml"], &[]).await;
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn a_bad_glob_is_exit_2_for_every_command_including_run() {
    // Globs are compiled with the rest of the configuration: `run` refuses to start
    // (no store, no endpoint) instead of failing its first pass, and every command
    // names the key and where it was set.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_s = store.to_string_lossy().into_owned();
    let env = [
        ("BBCRAWL_API_URL", "http://127.0.0.1:9/2.0"),
        ("BBCRAWL_WORKSPACES", WS),
        ("BITBUCKET_ACCESS_TOKEN", TOKEN),
        ("BBCRAWL_STORE", store_s.as_str()),
        ("BBCRAWL_LISTEN", "127.0.0.1:0"),
        ("BBCRAWL_INCLUDE", "api-*, api-["),
    ];
    for args in [vec!["sync"], vec!["run"], vec!["query", "repos"]] {
        let o = bbcrawl(dir.path(), &args, &env).await;
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("invalid value for `include[1]` (from BBCRAWL_INCLUDE): not a valid glob: unclosed character class; missing ']' (got \"api-[\")"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("serving"),
            "{args:?} started the endpoint: {err}"
        );
        assert!(!store.exists(), "{args:?} created the store");
    }
}

#[tokio::test]
async fn an_error_names_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let o = bbcrawl(
        dir.path(),
        &["sync", "--config", missing.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("cannot read config file"), "{err}");
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn missing_workspace_or_credentials_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = bbcrawl(
        dir.path(),
        &["verify"],
        &[("BITBUCKET_ACCESS_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("workspace"), "{}", stderr(&o));
    let o = bbcrawl(dir.path(), &["verify", "--workspace", "acme"], &[]).await;
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("credentials"), "{}", stderr(&o));
}

#[cfg(unix)]
#[tokio::test]
async fn a_world_readable_config_with_an_inline_secret_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bbcrawl.toml");
    std::fs::write(
        &path,
        format!("workspaces = [\"acme\"]\n[[credentials]]\naccess_token = \"{TOKEN}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = bbcrawl(
        dir.path(),
        &["verify", "--config", path.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("access_token"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(TOKEN));
}

#[tokio::test]
async fn simulate_prints_how_to_use_it_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_bbcrawl"))
        .current_dir(dir.path())
        .args(["simulate", "--listen", &listen, "--repos", "3"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let api = format!("http://{listen}/2.0");
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            printed.push_str(&line);
            printed.push('\n');
            if printed.contains(&api) && printed.contains("sim-access-token") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("simulate printed nothing useful");
    assert!(printed.contains("acme"), "{printed}");
    // It really serves: the printed token lists the workspace.
    let resp = reqwest::Client::new()
        .get(format!("{api}/repositories/acme"))
        .bearer_auth("sim-access-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    child.kill().await.unwrap();
}
