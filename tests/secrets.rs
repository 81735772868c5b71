//! Secrets never appear in any output: not at -vv, not at trace level, not
//! in errors, not in a config's Debug output.

use base64::Engine;
use bbcrawl::simulator::RepoSpec;

use crate::util::*;

fn forbidden() -> Vec<String> {
    let pair = format!("{EMAIL}:{API_TOKEN}");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pair);
    let app_pair = format!("{USERNAME}:{APP_PASSWORD}");
    let app_b64 = base64::engine::general_purpose::STANDARD.encode(&app_pair);
    vec![
        TOKEN.into(),
        API_TOKEN.into(),
        APP_PASSWORD.into(),
        pair,
        b64,
        app_pair,
        app_b64,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_output_at_any_log_level() {
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("svc", 5));
    let server = serve(&sim).await;
    let api = server.api_url();
    let envs: Vec<Vec<(&str, &str)>> = vec![
        vec![("BITBUCKET_ACCESS_TOKEN", TOKEN)],
        vec![
            ("BITBUCKET_USERNAME", EMAIL),
            ("BITBUCKET_API_TOKEN", API_TOKEN),
        ],
        vec![
            ("BITBUCKET_USERNAME", USERNAME),
            ("BITBUCKET_PASSWORD", APP_PASSWORD),
        ],
        // Wrong pairings: the secret is still ours and must stay hidden.
        vec![("BITBUCKET_ACCESS_TOKEN", API_TOKEN)],
        vec![
            ("BITBUCKET_USERNAME", EMAIL),
            ("BITBUCKET_PASSWORD", APP_PASSWORD),
        ],
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut runs = 0;
    for cred in &envs {
        for (args, log) in [
            (vec!["verify", "-vv"], None),
            (vec!["verify", "-vv", "--format", "json"], Some("trace")),
            (vec!["verify", "-vv", "--log-format", "json"], Some("trace")),
        ] {
            let mut env = vec![
                ("BBCRAWL_API_URL", api.as_str()),
                ("BBCRAWL_WORKSPACES", WS),
            ];
            env.extend(cred.iter().copied());
            if let Some(l) = log {
                env.push(("BBCRAWL_LOG", l));
            }
            let o = bbcrawl(dir.path(), &args, &env).await;
            let all = format!("{}{}", stdout(&o), stderr(&o));
            assert!(!all.is_empty());
            for secret in forbidden() {
                assert!(
                    !all.contains(&secret),
                    "{secret:?} leaked in {args:?}:\n{all}"
                );
            }
            runs += 1;
        }
    }
    assert_eq!(runs, 15);
    // The trace runs really logged the HTTP exchange, so the check means something.
    let mut env = vec![
        ("BBCRAWL_API_URL", api.as_str()),
        ("BBCRAWL_WORKSPACES", WS),
    ];
    env.push(("BITBUCKET_ACCESS_TOKEN", TOKEN));
    env.push(("BBCRAWL_LOG", "trace"));
    let o = bbcrawl(dir.path(), &["verify"], &env).await;
    assert!(
        stderr(&o).to_lowercase().contains("authorization")
            || stderr(&o).contains("bitbucket answered"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn config_debug_output_redacts_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bbcrawl.toml");
    std::fs::write(
        &path,
        format!(
            "workspaces = [\"acme\"]\n\
             [[credentials]]\naccess_token = \"{TOKEN}\"\n\
             [[credentials]]\nusername = \"{EMAIL}\"\napi_token = \"{API_TOKEN}\"\n\
             [[credentials]]\nusername = \"{USERNAME}\"\npassword = \"{APP_PASSWORD}\"\n"
        ),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let overrides = bbcrawl::config::Overrides {
        config_path: Some(path),
        ..Default::default()
    };
    let cfg = bbcrawl::config::Config::load_with_env(&overrides, &|_| None).unwrap();
    assert_eq!(cfg.credentials.len(), 3);
    let debug = format!("{cfg:?} {cfg:#?}");
    assert!(debug.contains("[REDACTED]"));
    for secret in forbidden() {
        assert!(!debug.contains(&secret), "{secret} in {debug}");
    }
}
