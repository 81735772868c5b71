//! `bbcrawl verify` through the real binary against the simulator: the four
//! DX codes with their exit codes, for each credential kind, text and JSON.

use bbcrawl::simulator::{RepoSpec, SimCredential, Simulator};

use crate::util::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Access,
    Api,
    AppPassword,
}

const KINDS: [Kind; 3] = [Kind::Access, Kind::Api, Kind::AppPassword];

/// Environment variables of one credential.
type Env = Vec<(&'static str, String)>;

fn env_for(kind: Kind, secret: &str) -> Env {
    match kind {
        Kind::Access => vec![("BITBUCKET_ACCESS_TOKEN", secret.to_owned())],
        Kind::Api => vec![
            ("BITBUCKET_USERNAME", EMAIL.to_owned()),
            ("BITBUCKET_API_TOKEN", secret.to_owned()),
        ],
        Kind::AppPassword => vec![
            ("BITBUCKET_USERNAME", USERNAME.to_owned()),
            ("BITBUCKET_PASSWORD", secret.to_owned()),
        ],
    }
}

fn good_secret(kind: Kind) -> &'static str {
    match kind {
        Kind::Access => TOKEN,
        Kind::Api => API_TOKEN,
        Kind::AppPassword => APP_PASSWORD,
    }
}

/// Runs `bbcrawl verify --format F` against `api_url` and workspace `ws`.
async fn verify(
    api_url: &str,
    ws: &str,
    env: Vec<(&'static str, String)>,
    json: bool,
) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let mut all: Vec<(&str, String)> = vec![
        ("BBCRAWL_API_URL", api_url.to_owned()),
        ("BBCRAWL_WORKSPACES", ws.to_owned()),
    ];
    all.extend(env);
    let env: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let format = if json { "json" } else { "text" };
    bbcrawl(dir.path(), &["verify", "--format", format], &env).await
}

fn json_of(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

fn populated() -> Simulator {
    let sim = world(0);
    for i in 0..3 {
        sim.add_repo(WS, RepoSpec::new(&format!("svc-{i}"), 5));
    }
    sim.add_workspace("hollow");
    sim
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_succeeds_for_each_credential_kind() {
    let sim = populated();
    let server = serve(&sim).await;
    for kind in KINDS {
        let o = verify(
            &server.api_url(),
            "https://bitbucket.org/acme/",
            env_for(kind, good_secret(kind)),
            true,
        )
        .await;
        assert_eq!(
            o.status.code(),
            Some(0),
            "{kind:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        assert_eq!(
            json_of(&o),
            serde_json::json!({"ok": true, "workspaces": [{"workspace": "acme", "repositories": 3}]})
        );
        let o = verify(
            &server.api_url(),
            "acme",
            env_for(kind, good_secret(kind)),
            false,
        )
        .await;
        assert_eq!(o.status.code(), Some(0));
        assert!(
            stdout(&o).contains("acme") && stdout(&o).contains("3 repositories"),
            "{}",
            stdout(&o)
        );
    }
    // It read one page of a default branch as well as the listing.
    assert!(sim
        .requests()
        .iter()
        .any(|r| r.path.contains("/commits/main")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_invalid_credentials_with_exit_3() {
    let sim = populated();
    let server = serve(&sim).await;
    for kind in KINDS {
        for json in [true, false] {
            let o = verify(&server.api_url(), WS, env_for(kind, "wrong-secret"), json).await;
            assert_eq!(
                o.status.code(),
                Some(3),
                "{kind:?}: {}{}",
                stdout(&o),
                stderr(&o)
            );
            if json {
                let v = json_of(&o);
                assert_eq!(v["ok"], false);
                assert_eq!(v["code"], "invalid_credentials");
                assert_eq!(v["status"], 401);
                assert_eq!(v["workspace"], WS);
                assert!(v["curl"].as_str().unwrap().starts_with("curl "));
            } else {
                assert!(
                    stdout(&o).starts_with("invalid_credentials"),
                    "{}",
                    stdout(&o)
                );
                assert!(stdout(&o).contains("curl "));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_token_sent_as_bearer_is_invalid_credentials() {
    let sim = populated();
    let server = serve(&sim).await;
    let o = verify(
        &server.api_url(),
        WS,
        vec![("BITBUCKET_ACCESS_TOKEN", API_TOKEN.to_owned())],
        true,
    )
    .await;
    assert_eq!(o.status.code(), Some(3));
    let v = json_of(&o);
    assert_eq!(v["code"], "invalid_credentials");
    assert!(v["hint"].as_str().unwrap().contains("api_token"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_missing_scopes_with_exit_4() {
    let sim = populated();
    sim.add_credential(SimCredential::AccessToken {
        token: "narrow-token".into(),
        scopes: vec!["account".into()],
        workspaces: vec![WS.into()],
    });
    sim.add_credential(SimCredential::ApiToken {
        email: "narrow@example.com".into(),
        token: "narrow-api".into(),
        scopes: vec!["read:account".into()],
        workspaces: vec![WS.into()],
    });
    sim.add_credential(SimCredential::AppPassword {
        username: "narrow-user".into(),
        password: "narrow-pw".into(),
        scopes: vec!["account".into()],
        workspaces: vec![WS.into()],
    });
    let server = serve(&sim).await;
    let cases: Vec<(Env, &str, &str)> = vec![
        (
            vec![("BITBUCKET_ACCESS_TOKEN", "narrow-token".into())],
            "account",
            "repository",
        ),
        (
            vec![
                ("BITBUCKET_USERNAME", "narrow@example.com".into()),
                ("BITBUCKET_API_TOKEN", "narrow-api".into()),
            ],
            "read:account",
            "read:repository:bitbucket",
        ),
        (
            vec![
                ("BITBUCKET_USERNAME", "narrow-user".into()),
                ("BITBUCKET_PASSWORD", "narrow-pw".into()),
            ],
            "account",
            "repository",
        ),
    ];
    for (env, granted, required) in cases {
        let o = verify(&server.api_url(), WS, env.clone(), true).await;
        assert_eq!(o.status.code(), Some(4), "{}{}", stdout(&o), stderr(&o));
        let v = json_of(&o);
        assert_eq!(v["code"], "invalid_permissions");
        assert_eq!(v["status"], 403);
        assert_eq!(v["granted"], serde_json::json!([granted]));
        assert_eq!(v["required"], serde_json::json!([required]));
        let o = verify(&server.api_url(), WS, env, false).await;
        assert_eq!(o.status.code(), Some(4));
        let text = stdout(&o);
        assert!(
            text.contains(&format!("granted scopes: {granted}")),
            "{text}"
        );
        assert!(
            text.contains(&format!("required scopes: {required}")),
            "{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_no_resources_with_exit_5() {
    let sim = populated();
    let server = serve(&sim).await;
    for kind in KINDS {
        // A workspace that does not exist, or that this credential cannot see.
        for ws in ["no-such-workspace", "hollow"] {
            let o = verify(
                &server.api_url(),
                ws,
                env_for(kind, good_secret(kind)),
                true,
            )
            .await;
            assert_eq!(
                o.status.code(),
                Some(5),
                "{kind:?} {ws}: {}{}",
                stdout(&o),
                stderr(&o)
            );
            let v = json_of(&o);
            assert_eq!(v["code"], "no_resources");
            assert_eq!(v["status"], 404);
            assert_eq!(v["workspace"], ws);
            let o = verify(
                &server.api_url(),
                ws,
                env_for(kind, good_secret(kind)),
                false,
            )
            .await;
            assert_eq!(o.status.code(), Some(5));
            assert!(stdout(&o).starts_with("no_resources"), "{}", stdout(&o));
        }
    }
    // A workspace the credential can see but that holds no repository.
    let empty = Simulator::new(Default::default());
    empty.add_workspace("hollow");
    empty.add_credential(SimCredential::AccessToken {
        token: TOKEN.into(),
        scopes: vec!["repository".into()],
        workspaces: vec!["hollow".into()],
    });
    let server = serve(&empty).await;
    let o = verify(
        &server.api_url(),
        "hollow",
        env_for(Kind::Access, TOKEN),
        true,
    )
    .await;
    assert_eq!(o.status.code(), Some(5), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(json_of(&o)["code"], "no_resources");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_connection_failed_with_exit_1() {
    // A port nobody listens on: bind, note the port, close.
    let port = free_port();
    let api = format!("http://127.0.0.1:{port}/2.0");
    for kind in KINDS {
        let o = verify(&api, WS, env_for(kind, good_secret(kind)), true).await;
        assert_eq!(
            o.status.code(),
            Some(1),
            "{kind:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        let v = json_of(&o);
        assert_eq!(v["code"], "connection_failed");
        assert_eq!(v["status"], serde_json::Value::Null);
        let o = verify(&api, WS, env_for(kind, good_secret(kind)), false).await;
        assert_eq!(o.status.code(), Some(1));
        assert!(
            stdout(&o).starts_with("connection_failed"),
            "{}",
            stdout(&o)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reproducing_curl_uses_placeholders_for_each_kind() {
    let sim = populated();
    let server = serve(&sim).await;
    let want = [
        (
            Kind::Access,
            "-H 'Authorization: Bearer YOUR_WORKSPACE_TOKEN'",
        ),
        (Kind::Api, "-u 'YOUR_ATLASSIAN_EMAIL:YOUR_API_TOKEN'"),
        (
            Kind::AppPassword,
            "-u 'YOUR_BITBUCKET_USERNAME:YOUR_APP_PASSWORD'",
        ),
    ];
    for (kind, auth) in want {
        let o = verify(&server.api_url(), WS, env_for(kind, "wrong-secret"), true).await;
        let curl = json_of(&o)["curl"].as_str().unwrap().to_owned();
        assert!(curl.contains(auth), "{curl}");
        assert!(
            curl.contains(&format!("{}/repositories/acme", server.api_url())),
            "{curl}"
        );
        assert!(!curl.contains("wrong-secret"));
    }
}
