//! Configuration: precedence, workspace URLs, secrets, errors (SPEC.md section 2).
//!
//! The environment is always passed as a lookup function: the tests never touch the
//! process environment, so they can run in parallel.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bbcrawl::config::*;

/// A distinctive secret: if it shows up in any output, the test that looks will see it.
const TOKEN: &str = "ATCTT3xFfGN0-very-secret-token-7f3a";

/// A temporary directory holding a config file and its secret files.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating parent directories) with the given unix mode.
    fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = self.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        set_mode(&path, mode);
        path
    }

    /// Writes `bbcrawl.toml` with mode 600, as a careful user would.
    fn config(&self, text: &str) -> PathBuf {
        self.write("bbcrawl.toml", text, 0o600)
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) {}

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name: &str| map.get(name).cloned()
}

fn with_file(path: &Path) -> Overrides {
    Overrides {
        config_path: Some(path.to_path_buf()),
        ..Overrides::default()
    }
}

/// Loads a config file with the given environment.
fn load(path: &Path, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::load_with_env(&with_file(path), &env_of(env))
}

/// Loads a config file that must be invalid and returns the error's Display.
fn error_text(toml: &str) -> String {
    let dir = Dir::new();
    let path = dir.config(toml);
    match load(&path, &[]) {
        Ok(config) => panic!("expected an error for {toml:?}, got {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_apply_when_nothing_is_set() {
    let config = Config::load_with_env(&Overrides::default(), &env_of(&[])).unwrap();
    assert!(config.workspaces.is_empty());
    assert_eq!(config.api_url.as_str(), "https://api.bitbucket.org/2.0");
    assert_eq!(config.api_base(), "https://api.bitbucket.org/2.0");
    assert_eq!(config.store, PathBuf::from("./bbcrawl-data"));
    assert!(config.slugs.include().is_empty());
    assert!(config.slugs.exclude().is_empty());
    assert_eq!(config.since, None);
    assert_eq!(config.requests_per_hour, 1000);
    assert_eq!(config.max_in_flight, 4);
    assert_eq!(config.page_size, 100);
    assert_eq!(config.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.request_timeout, Duration::from_secs(60));
    assert_eq!(config.max_retries, 10);
    assert_eq!(config.listen, "127.0.0.1:9490".parse().unwrap());
    assert_eq!(config.interval, Duration::from_secs(900));
    assert_eq!(config.audit_interval, Duration::from_secs(86_400));
    assert!(config.credentials.is_empty());
    assert!(config.warnings.is_empty());
}

#[test]
fn config_file_is_found_through_bbcrawl_config() {
    let dir = Dir::new();
    let path = dir.config("requests_per_hour = 77\n");
    let env = [("BBCRAWL_CONFIG", path.to_str().unwrap())];
    let config = Config::load_with_env(&Overrides::default(), &env_of(&env)).unwrap();
    assert_eq!(config.requests_per_hour, 77);
}

#[test]
fn missing_config_file_is_an_error() {
    let dir = Dir::new();
    let err = load(&dir.path().join("nope.toml"), &[]).unwrap_err();
    assert!(matches!(err, ConfigError::ReadFile { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let dir = Dir::new();
    let path = dir.config(
        r#"
store = "/from/file"
requests_per_hour = 100
workspaces = ["filews"]
listen = "127.0.0.1:1001"
api_url = "https://file.example/2.0"
"#,
    );
    let env = [
        ("BBCRAWL_STORE", "/from/env"),
        ("BBCRAWL_REQUESTS_PER_HOUR", "200"),
        ("BBCRAWL_WORKSPACES", "envws"),
        ("BBCRAWL_LISTEN", "127.0.0.1:1002"),
        ("BBCRAWL_API_URL", "https://env.example/2.0"),
    ];

    let file_only = load(&path, &[]).unwrap();
    assert_eq!(file_only.store, PathBuf::from("/from/file"));
    assert_eq!(file_only.requests_per_hour, 100);
    assert_eq!(file_only.workspaces, ["filews"]);
    assert_eq!(file_only.listen.port(), 1001);
    assert_eq!(file_only.api_url.host_str(), Some("file.example"));

    let env_over_file = load(&path, &env).unwrap();
    assert_eq!(env_over_file.store, PathBuf::from("/from/env"));
    assert_eq!(env_over_file.requests_per_hour, 200);
    assert_eq!(env_over_file.workspaces, ["envws"]);
    assert_eq!(env_over_file.listen.port(), 1002);
    assert_eq!(env_over_file.api_url.host_str(), Some("env.example"));

    let flags = Overrides {
        config_path: Some(path.clone()),
        store: Some(PathBuf::from("/from/flag")),
        workspaces: vec!["flagws".to_string()],
        api_url: Some("https://flag.example/2.0".to_string()),
        listen: Some("127.0.0.1:1003".to_string()),
        web_config_file: None,
        requests_per_hour: Some(300),
        shard: None,
    };
    let flag_over_env = Config::load_with_env(&flags, &env_of(&env)).unwrap();
    assert_eq!(flag_over_env.store, PathBuf::from("/from/flag"));
    assert_eq!(flag_over_env.requests_per_hour, 300);
    assert_eq!(flag_over_env.workspaces, ["flagws"]);
    assert_eq!(flag_over_env.listen.port(), 1003);
    assert_eq!(flag_over_env.api_url.host_str(), Some("flag.example"));
}

#[test]
fn precedence_is_decided_per_key() {
    let dir = Dir::new();
    let path = dir.config("page_size = 50\nmax_in_flight = 2\nrequests_per_hour = 100\n");
    let overrides = Overrides {
        config_path: Some(path),
        store: Some(PathBuf::from("/flag/store")),
        ..Overrides::default()
    };
    let env = env_of(&[("BBCRAWL_MAX_IN_FLIGHT", "8")]);
    let config = Config::load_with_env(&overrides, &env).unwrap();
    assert_eq!(config.store, PathBuf::from("/flag/store"));
    assert_eq!(config.max_in_flight, 8);
    assert_eq!(config.page_size, 50);
    assert_eq!(config.requests_per_hour, 100);
    assert_eq!(config.interval, Duration::from_secs(900));
}

#[test]
fn empty_env_var_counts_as_unset() {
    let dir = Dir::new();
    let path = dir.config("requests_per_hour = 100\nstore = \"/from/file\"\n");
    let env = [
        ("BBCRAWL_REQUESTS_PER_HOUR", ""),
        ("BBCRAWL_STORE", "  "),
        ("BITBUCKET_ACCESS_TOKEN", ""),
    ];
    let config = load(&path, &env).unwrap();
    assert_eq!(config.requests_per_hour, 100);
    assert_eq!(config.store, PathBuf::from("/from/file"));
    assert!(config.credentials.is_empty());
}

#[test]
fn relative_store_in_file_resolves_against_the_file_directory() {
    let dir = Dir::new();
    let path = dir.config("store = \"data\"\n");
    assert_eq!(load(&path, &[]).unwrap().store, dir.path().join("data"));
}

#[test]
fn every_key_is_read_from_the_file() {
    let dir = Dir::new();
    let path = dir.config(
        r#"
include = ["api-*", "web"]
exclude = ["*-archive"]
since = "2024-05-01T12:30:00+02:00"
max_in_flight = 16
page_size = 10
connect_timeout_seconds = 3
request_timeout_seconds = 30
max_retries = 0
interval_seconds = 60
audit_interval_seconds = 3600
"#,
    );
    let config = load(&path, &[]).unwrap();
    assert_eq!(config.slugs.include(), ["api-*", "web"]);
    assert_eq!(config.slugs.exclude(), ["*-archive"]);
    assert_eq!(
        config.since.unwrap().to_rfc3339(),
        "2024-05-01T10:30:00+00:00"
    );
    assert_eq!(config.max_in_flight, 16);
    assert_eq!(config.page_size, 10);
    assert_eq!(config.connect_timeout, Duration::from_secs(3));
    assert_eq!(config.request_timeout, Duration::from_secs(30));
    assert_eq!(config.max_retries, 0);
    assert_eq!(config.interval, Duration::from_secs(60));
    assert_eq!(config.audit_interval, Duration::from_secs(3600));
}

#[test]
fn env_lists_and_intervals_are_read() {
    let env = [
        ("BBCRAWL_INCLUDE", "api-*, web,"),
        ("BBCRAWL_EXCLUDE", "*-archive"),
        ("BBCRAWL_SINCE", "2024-05-01"),
        ("BBCRAWL_INTERVAL_SECONDS", "120"),
        ("BBCRAWL_AUDIT_INTERVAL_SECONDS", "7200"),
    ];
    let config = Config::load_with_env(&Overrides::default(), &env_of(&env)).unwrap();
    assert_eq!(config.slugs.include(), ["api-*", "web"]);
    assert_eq!(config.slugs.exclude(), ["*-archive"]);
    assert_eq!(
        config.since.unwrap().to_rfc3339(),
        "2024-05-01T00:00:00+00:00"
    );
    assert_eq!(config.interval, Duration::from_secs(120));
    assert_eq!(config.audit_interval, Duration::from_secs(7200));
}

#[test]
fn since_accepts_an_unquoted_toml_date() {
    let dir = Dir::new();
    let path = dir.config("since = 2023-01-15\n");
    let since = load(&path, &[]).unwrap().since.unwrap();
    assert_eq!(since.to_rfc3339(), "2023-01-15T00:00:00+00:00");
}

#[test]
fn workspace_urls_mean_their_first_path_segment() {
    for input in [
        "acme",
        "https://bitbucket.org/acme/",
        "https://bitbucket.org/acme",
        "https://bitbucket.org/acme/repo",
        "https://bitbucket.org/acme/repo/src/main/",
        "bitbucket.org/acme",
        "https://www.bitbucket.org/acme/",
        "Acme",
        "  acme ",
    ] {
        assert_eq!(parse_workspace(input), Ok("acme".to_string()), "{input}");
    }
    assert_eq!(parse_workspace("my-team_2"), Ok("my-team_2".to_string()));
}

#[test]
fn workspaces_of_other_hosts_and_bad_names_are_rejected() {
    for input in [
        "",
        "https://github.com/acme/",
        "gitlab.com/acme",
        "https://api.bitbucket.org/2.0/repositories/acme",
        "https://bitbucket.org/",
        "ftp://bitbucket.org/acme",
        "ac me",
        "acme!",
        "a.b",
    ] {
        assert!(parse_workspace(input).is_err(), "{input:?} was accepted");
    }
}

#[test]
fn workspace_list_is_normalised_and_deduplicated() {
    let env = [(
        "BBCRAWL_WORKSPACES",
        "https://bitbucket.org/acme/, beta ,acme,",
    )];
    let config = Config::load_with_env(&Overrides::default(), &env_of(&env)).unwrap();
    assert_eq!(config.workspaces, ["acme", "beta"]);
}

#[test]
fn workspace_of_another_host_names_the_key() {
    let err = error_text("workspaces = [\"https://github.com/acme\"]\n");
    assert!(err.contains("`workspaces`"), "{err}");
    assert!(err.contains("github.com"), "{err}");
}

#[test]
fn access_token_from_file() {
    let dir = Dir::new();
    let path = dir.config(&format!("[[credentials]]\naccess_token = \"{TOKEN}\"\n"));
    let config = load(&path, &[]).unwrap();
    assert_eq!(
        config.credentials,
        [Credential::AccessToken {
            token: Secret::new(TOKEN)
        }]
    );
    assert_eq!(config.credentials[0].kind(), CredentialKind::AccessToken);
    assert_eq!(config.credentials[0].numbered_label(0), "access token #1");
    assert!(config.warnings.is_empty());
}

#[test]
fn api_token_and_app_password_from_file() {
    let dir = Dir::new();
    let path = dir.config(&format!(
        r#"
[[credentials]]
username = "dev@example.com"
api_token = "{TOKEN}"

[[credentials]]
username = "sim-user"
password = "app-pass-123"
"#
    ));
    let config = load(&path, &[]).unwrap();
    assert_eq!(
        config.credentials,
        [
            Credential::ApiToken {
                email: "dev@example.com".to_string(),
                token: Secret::new(TOKEN),
            },
            Credential::AppPassword {
                username: "sim-user".to_string(),
                password: Secret::new("app-pass-123"),
            },
        ]
    );
    assert_eq!(config.credentials[0].label(), "API token dev@example.com");
    assert_eq!(config.credentials[1].label(), "app password sim-user");
    assert_eq!(config.credentials[1].kind(), CredentialKind::AppPassword);
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(config.warnings[0].contains("2026-07-28"));
    assert!(config.warnings[0].contains("API token"));
}

#[test]
fn each_credential_kind_from_env() {
    let access = Config::load_with_env(
        &Overrides::default(),
        &env_of(&[("BITBUCKET_ACCESS_TOKEN", TOKEN)]),
    )
    .unwrap();
    assert_eq!(
        access.credentials,
        [Credential::AccessToken {
            token: Secret::new(TOKEN)
        }]
    );

    let api = Config::load_with_env(
        &Overrides::default(),
        &env_of(&[
            ("BITBUCKET_USERNAME", "dev@example.com"),
            ("BITBUCKET_API_TOKEN", TOKEN),
        ]),
    )
    .unwrap();
    assert_eq!(
        api.credentials,
        [Credential::ApiToken {
            email: "dev@example.com".to_string(),
            token: Secret::new(TOKEN)
        }]
    );

    let app = Config::load_with_env(
        &Overrides::default(),
        &env_of(&[
            ("BITBUCKET_USERNAME", "sim-user"),
            ("BITBUCKET_PASSWORD", "pw"),
        ]),
    )
    .unwrap();
    assert_eq!(
        app.credentials,
        [Credential::AppPassword {
            username: "sim-user".to_string(),
            password: Secret::new("pw")
        }]
    );
    assert!(app.warnings.iter().any(|w| w.contains("2026-07-28")));
}

#[test]
fn env_credential_replaces_the_files_credentials() {
    let dir = Dir::new();
    let path = dir.config(
        "[[credentials]]\naccess_token = \"file-token\"\n[[credentials]]\naccess_token = \"file-token-2\"\n",
    );
    let config = load(&path, &[("BITBUCKET_ACCESS_TOKEN", TOKEN)]).unwrap();
    assert_eq!(
        config.credentials,
        [Credential::AccessToken {
            token: Secret::new(TOKEN)
        }]
    );
    assert!(config.warnings.iter().any(|w| w.contains("replaces")));
}

#[test]
fn env_credential_errors_name_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("BITBUCKET_API_TOKEN", TOKEN)], "BITBUCKET_USERNAME"),
        (
            &[
                ("BITBUCKET_USERNAME", "devuser"),
                ("BITBUCKET_API_TOKEN", TOKEN),
            ],
            "BITBUCKET_USERNAME",
        ),
        (
            &[
                ("BITBUCKET_USERNAME", "dev@example.com"),
                ("BITBUCKET_PASSWORD", TOKEN),
            ],
            "BITBUCKET_USERNAME",
        ),
        (
            &[
                ("BITBUCKET_ACCESS_TOKEN", TOKEN),
                ("BITBUCKET_PASSWORD", TOKEN),
            ],
            "BITBUCKET_ACCESS_TOKEN",
        ),
        (&[("BITBUCKET_USERNAME", "devuser")], "BITBUCKET_USERNAME"),
    ];
    for (env, key) in cases {
        let err = Config::load_with_env(&Overrides::default(), &env_of(env)).unwrap_err();
        assert_eq!(err.key(), Some(*key), "{err}");
        assert!(err.to_string().contains(key), "{err}");
        assert!(!err.to_string().contains(TOKEN), "{err}");
    }
}

#[test]
fn api_token_needs_an_email_username() {
    let err = error_text("[[credentials]]\nusername = \"devuser\"\napi_token = \"t\"\n");
    assert!(err.contains("`credentials[0].username`"), "{err}");
    assert!(err.contains("e-mail"), "{err}");
}

#[test]
fn app_password_rejects_an_email_username() {
    let err = error_text(
        "[[credentials]]\naccess_token = \"a\"\n[[credentials]]\nusername = \"dev@example.com\"\npassword = \"p\"\n",
    );
    assert!(err.contains("`credentials[1].username`"), "{err}");
    assert!(err.contains("Bitbucket username"), "{err}");
}

#[test]
fn ambiguous_or_empty_credentials_are_rejected() {
    let both = error_text(
        "[[credentials]]\nusername = \"sim-user\"\napi_token = \"t\"\npassword = \"p\"\n",
    );
    assert!(both.contains("`credentials[0]`"), "{both}");
    assert!(both.contains("more than one kind"), "{both}");

    let inline_and_file =
        error_text("[[credentials]]\naccess_token = \"t\"\naccess_token_file = \"t.txt\"\n");
    assert!(
        inline_and_file.contains("`credentials[0]`"),
        "{inline_and_file}"
    );

    let none = error_text("[[credentials]]\nusername = \"sim-user\"\n");
    assert!(none.contains("`credentials[0]`"), "{none}");

    let token_with_user =
        error_text("[[credentials]]\nusername = \"sim-user\"\naccess_token = \"t\"\n");
    assert!(
        token_with_user.contains("`credentials[0].username`"),
        "{token_with_user}"
    );
}

#[test]
fn secret_files_are_trimmed_and_resolved_against_the_config_directory() {
    let dir = Dir::new();
    dir.write("secrets/token", &format!("{TOKEN}\n"), 0o600);
    dir.write("secrets/api", &format!("  {TOKEN}-api \r\n"), 0o600);
    let path = dir.config(
        r#"
[[credentials]]
access_token_file = "secrets/token"

[[credentials]]
username = "dev@example.com"
api_token_file = "secrets/api"
"#,
    );
    // The test's working directory is the crate root, not `dir`: the relative paths
    // only resolve if they are taken relative to the config file.
    let config = load(&path, &[]).unwrap();
    assert_eq!(
        config.credentials,
        [
            Credential::AccessToken {
                token: Secret::new(TOKEN)
            },
            Credential::ApiToken {
                email: "dev@example.com".to_string(),
                token: Secret::new(format!("{TOKEN}-api")),
            },
        ]
    );
}

#[test]
fn env_secret_files_are_read() {
    let dir = Dir::new();
    let token = dir.write("token", &format!("{TOKEN}\n"), 0o600);
    let env = [("BITBUCKET_ACCESS_TOKEN_FILE", token.to_str().unwrap())];
    let config = Config::load_with_env(&Overrides::default(), &env_of(&env)).unwrap();
    assert_eq!(
        config.credentials,
        [Credential::AccessToken {
            token: Secret::new(TOKEN)
        }]
    );
}

#[test]
fn empty_or_missing_secret_files_are_errors_naming_the_key() {
    let dir = Dir::new();
    dir.write("empty", "\n", 0o600);
    let path = dir.config("[[credentials]]\naccess_token_file = \"empty\"\n");
    let err = load(&path, &[]).unwrap_err();
    assert_eq!(err.key(), Some("credentials[0].access_token_file"), "{err}");
    assert!(err.to_string().contains("empty"), "{err}");

    let path = dir.config("[[credentials]]\naccess_token_file = \"missing\"\n");
    let err = load(&path, &[]).unwrap_err();
    assert!(matches!(err, ConfigError::SecretFile { .. }), "{err:?}");
    assert!(
        err.to_string().contains("credentials[0].access_token_file"),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn world_readable_file_with_inline_secret_is_refused_until_chmod_600() {
    let dir = Dir::new();
    let text = format!("[[credentials]]\naccess_token = \"{TOKEN}\"\n");
    let path = dir.write("bbcrawl.toml", &text, 0o644);
    let err = load(&path, &[]).unwrap_err();
    assert!(matches!(err, ConfigError::InsecureFile { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("chmod 600"), "{message}");
    assert!(message.contains("access_token_file"), "{message}");
    assert!(!message.contains(TOKEN), "{message}");

    let group_readable = dir.write("group.toml", &text, 0o640);
    assert!(matches!(
        load(&group_readable, &[]),
        Err(ConfigError::InsecureFile { .. })
    ));

    set_mode(&path, 0o600);
    let config = load(&path, &[]).unwrap();
    assert_eq!(config.credentials.len(), 1);
}

#[cfg(unix)]
#[test]
fn world_readable_file_with_only_secret_file_references_is_accepted() {
    let dir = Dir::new();
    dir.write("token", TOKEN, 0o600);
    let path = dir.write(
        "bbcrawl.toml",
        "workspaces = [\"acme\"]\n[[credentials]]\naccess_token_file = \"token\"\n",
        0o644,
    );
    let config = load(&path, &[]).unwrap();
    assert_eq!(config.credentials.len(), 1);
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("page_size = 5\n", "`page_size`"),
        ("page_size = 101\n", "`page_size`"),
        ("requests_per_hour = 0\n", "`requests_per_hour`"),
        ("max_in_flight = 0\n", "`max_in_flight`"),
        ("interval_seconds = 0\n", "`interval_seconds`"),
        (
            "connect_timeout_seconds = -1\n",
            "`connect_timeout_seconds`",
        ),
        ("api_url = \"http://example.com\"\n", "`api_url`"),
        ("api_url = \"ftp://example.com\"\n", "`api_url`"),
        ("api_url = \"not a url\"\n", "`api_url`"),
        ("listen = \"nope\"\n", "`listen`"),
        ("since = \"yesterday\"\n", "`since`"),
        ("include = [\"\"]\n", "`include[0]`"),
        ("requests_per_hr = 10\n", "`requests_per_hr`"),
        ("page_size = \"ten\"\n", "`page_size`"),
    ];
    for (toml, key) in cases {
        let err = error_text(toml);
        assert!(err.contains(key), "{toml:?} gave: {err}");
    }
}

#[test]
fn a_bad_glob_names_its_entry_and_where_it_was_set() {
    let dir = Dir::new();
    let path = dir.config("include = [\"api-*\"]\nexclude = [\"old-*\", \"{a,b\"]\n");
    let err = load(&path, &[]).unwrap_err();
    assert_eq!(err.key(), Some("exclude[1]"), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "invalid value for `exclude[1]` (from {}): not a valid glob: unclosed alternate group; missing '}}' (maybe escape '{{' with '[{{]'?) (got \"{{a,b\")",
            path.display()
        )
    );

    let env = [("BBCRAWL_INCLUDE", "web, api-[")];
    let err = load(&path, &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid value for `include[1]` (from BBCRAWL_INCLUDE): not a valid glob: unclosed character class; missing ']' (got \"api-[\")"
    );

    let good = dir.config("include = [\"api-*\", \" web \"]\nexclude = [\"api-old\"]\n");
    let config = load(&good, &[]).unwrap();
    assert_eq!(config.slugs.include(), ["api-*", "web"]);
    assert!(config.slugs.wants("api-new") && config.slugs.wants("web"));
    assert!(!config.slugs.wants("api-old") && !config.slugs.wants("docs"));
}

#[test]
fn unknown_keys_are_rejected_with_their_table() {
    let dir = Dir::new();
    let path = dir.config("[[credentials]]\naccess_token_file = \"t\"\ntokn = \"x\"\n");
    let err = load(&path, &[]).unwrap_err();
    assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err:?}");
    assert_eq!(err.key(), Some("credentials[0].tokn"), "{err}");
}

#[test]
fn bad_env_values_name_the_key_and_the_variable() {
    let err = Config::load_with_env(
        &Overrides::default(),
        &env_of(&[("BBCRAWL_REQUESTS_PER_HOUR", "0")]),
    )
    .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("`requests_per_hour`"), "{message}");
    assert!(message.contains("BBCRAWL_REQUESTS_PER_HOUR"), "{message}");
    assert_eq!(err.key(), Some("requests_per_hour"));

    let err = Config::load_with_env(
        &Overrides::default(),
        &env_of(&[("BBCRAWL_MAX_IN_FLIGHT", "lots")]),
    )
    .unwrap_err();
    assert!(err.to_string().contains("BBCRAWL_MAX_IN_FLIGHT"), "{err}");
}

#[test]
fn http_api_url_is_allowed_only_to_loopback() {
    for (url, base) in [
        ("http://127.0.0.1:8080/2.0/", "http://127.0.0.1:8080/2.0"),
        ("http://127.1.2.3:8080/2.0", "http://127.1.2.3:8080/2.0"),
        ("http://localhost:8080", "http://localhost:8080"),
        ("http://[::1]:8080/api", "http://[::1]:8080/api"),
        (
            "https://bitbucket.example/rest/2.0//",
            "https://bitbucket.example/rest/2.0",
        ),
    ] {
        let overrides = Overrides {
            api_url: Some(url.to_string()),
            ..Overrides::default()
        };
        let config = Config::load_with_env(&overrides, &env_of(&[])).unwrap();
        assert_eq!(config.api_base(), base, "{url}");
        assert!(!config.api_url.path().ends_with("//"), "{url}");
    }
    for url in [
        "http://10.0.0.1/2.0",
        "http://bitbucket.org/2.0",
        "https://user:pw@api.bitbucket.org/2.0",
    ] {
        let overrides = Overrides {
            api_url: Some(url.to_string()),
            ..Overrides::default()
        };
        let err = Config::load_with_env(&overrides, &env_of(&[])).unwrap_err();
        assert_eq!(err.key(), Some("api_url"), "{url}: {err}");
        assert!(err.to_string().contains("--api-url"), "{err}");
    }
}

/// A non-loopback `listen` loads (only `run` listens, and refuses it
/// without a web config: tests/web.rs); with `insecure_listen = true` the
/// configuration warns what it exposes.
#[test]
fn non_loopback_listen_loads_and_warns_when_insecure() {
    let overrides = Overrides {
        listen: Some("0.0.0.0:9490".to_string()),
        ..Overrides::default()
    };
    let config = Config::load_with_env(&overrides, &env_of(&[])).unwrap();
    assert_eq!(config.listen, "0.0.0.0:9490".parse().unwrap());
    assert!(!config.insecure_listen && config.web_config_file.is_none());
    let dir = Dir::new();
    let path = dir.config("listen = \"0.0.0.0:9490\"\ninsecure_listen = true\n");
    let config = load(&path, &[]).unwrap();
    assert!(config.insecure_listen);
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("not loopback and there is no web_config_file")),
        "{:?}",
        config.warnings
    );
    let path =
        dir.config("listen = \"0.0.0.0:9490\"\nweb_config_file = \"web.yml\"\napi = false\n");
    let config = load(&path, &[]).unwrap();
    assert_eq!(config.web_config_file, Some(path.with_file_name("web.yml")));
    assert!(!config.api && !config.health_without_auth);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn debug_output_redacts_secrets() {
    let dir = Dir::new();
    let path = dir.config(&format!(
        "[[credentials]]\naccess_token = \"{TOKEN}\"\n[[credentials]]\nusername = \"dev@example.com\"\napi_token = \"{TOKEN}-api\"\n[[credentials]]\nusername = \"sim-user\"\npassword = \"{TOKEN}-pw\"\n"
    ));
    let config = load(&path, &[]).unwrap();
    let debug = format!("{config:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
    assert_eq!(debug.matches("[REDACTED]").count(), 3, "{debug}");
    assert!(debug.contains("dev@example.com"), "{debug}");
    let pretty = format!("{config:#?}");
    assert!(!pretty.contains(TOKEN));
    assert_eq!(Secret::new(TOKEN).to_string(), "[REDACTED]");
    assert_eq!(Secret::new(TOKEN).expose(), TOKEN);
}

#[test]
fn parse_errors_do_not_echo_secrets() {
    for toml in [
        format!("[[credentials]]\naccess_token = \"{TOKEN}\nworkspaces = []\n"),
        format!("[[credentials]]\naccess_token = {TOKEN}\n"),
        format!("[[credentials]]\naccess_token = \"{TOKEN}\" x\n"),
        format!("[[credentials]]\naccess_token = \"\\q{TOKEN}\"\n"),
        "[[credentials]]\naccess_token = 12345678987654321\n".to_string(),
        format!("credentials = \"{TOKEN}\"\n"),
        format!("{TOKEN}\n"),
    ] {
        let err = error_text(&toml);
        assert!(!err.contains(TOKEN), "{toml:?} gave: {err}");
        assert!(!err.contains("12345678987654321"), "{toml:?} gave: {err}");
        assert!(err.contains("line"), "{toml:?} gave: {err}");
    }
    let err = error_text(&format!("[[credentials]]\naccess_token = {TOKEN}\n"));
    assert!(err.contains("credentials[0].access_token"), "{err}");
}

/// The example file documents every key; with its settings uncommented it must load.
fn example_text() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/bbcrawl.example.toml");
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn example_config_loads_and_matches_the_defaults() {
    let dir = Dir::new();
    let path = dir.config(&example_text());
    let config = load(&path, &[]).unwrap();
    let defaults = Config::load_with_env(&Overrides::default(), &env_of(&[])).unwrap();
    assert_eq!(config.api_url, defaults.api_url);
    assert_eq!(config.requests_per_hour, defaults.requests_per_hour);
    assert_eq!(config.max_in_flight, defaults.max_in_flight);
    assert_eq!(config.page_size, defaults.page_size);
    assert_eq!(config.connect_timeout, defaults.connect_timeout);
    assert_eq!(config.request_timeout, defaults.request_timeout);
    assert_eq!(config.max_retries, defaults.max_retries);
    assert_eq!(config.listen, defaults.listen);
    assert_eq!(config.interval, defaults.interval);
    assert_eq!(config.audit_interval, defaults.audit_interval);
    assert!(config.credentials.is_empty());
}

#[test]
fn example_config_is_world_readable_safe_as_shipped() {
    // Shipped with mode 644 by git: it must not hold an inline secret.
    let dir = Dir::new();
    let path = dir.write("bbcrawl.toml", &example_text(), 0o644);
    assert!(load(&path, &[]).is_ok());
}

#[test]
fn example_config_credentials_load_when_uncommented() {
    // Commented-out settings start with `#` directly followed by the key or table;
    // prose comments start with `# `. Uncomment every setting.
    let text: String = example_text()
        .lines()
        .map(|line| match line.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                rest.to_string()
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = Dir::new();
    dir.write("secrets/bitbucket-access-token", TOKEN, 0o600);
    dir.write("secrets/bitbucket-api-token", TOKEN, 0o600);
    dir.write("secrets/bitbucket-app-password", TOKEN, 0o600);
    let path = dir.config(&text);
    let config = load(&path, &[]).unwrap();
    let kinds: Vec<CredentialKind> = config.credentials.iter().map(Credential::kind).collect();
    assert_eq!(
        kinds,
        [
            CredentialKind::AccessToken,
            CredentialKind::ApiToken,
            CredentialKind::AppPassword
        ]
    );
    assert!(!config.workspaces.is_empty());
}

// ---------------------------------------------------------------------------
// `shard` (issue 16): flag, BBCRAWL_SHARD, Kubernetes' variables, file.

/// The `shard` a config file (`toml`, may be empty) and `env` give, with
/// `--shard` when `flag` is set, as `I/N`.
fn shard_of(
    toml: &str,
    env: &[(&str, &str)],
    flag: Option<&str>,
) -> Result<Option<String>, String> {
    let dir = Dir::new();
    let path = dir.config(toml);
    let overrides = Overrides {
        shard: flag.map(str::to_owned),
        ..with_file(&path)
    };
    Config::load_with_env(&overrides, &env_of(env))
        .map(|c| c.shard.map(|s| s.to_string()))
        .map_err(|e| e.to_string().replace(&path.display().to_string(), "FILE"))
}

#[test]
fn shard_comes_from_the_flag_the_environment_or_the_file() {
    assert_eq!(shard_of("", &[], None), Ok(None));
    assert_eq!(
        shard_of("shard = \"1/4\"\n", &[], None),
        Ok(Some("1/4".into()))
    );
    assert_eq!(
        shard_of("shard = \"1/4\"\n", &[("BBCRAWL_SHARD", " 2 / 4 ")], None),
        Ok(Some("2/4".into()))
    );
    assert_eq!(
        shard_of(
            "shard = \"1/4\"\n",
            &[("BBCRAWL_SHARD", "2/4")],
            Some("3/8")
        ),
        Ok(Some("3/8".into()))
    );
    // One shard of one is allowed: it crawls everything.
    assert_eq!(
        shard_of("", &[("BBCRAWL_SHARD", "0/1")], None),
        Ok(Some("0/1".into()))
    );
    // Set but empty counts as unset, as for every variable.
    assert_eq!(
        shard_of("shard = \"1/4\"\n", &[("BBCRAWL_SHARD", "")], None),
        Ok(Some("1/4".into()))
    );
}

#[test]
fn shard_comes_from_kubernetes_pod_or_job_index_with_bbcrawl_shards() {
    let statefulset = [("BBCRAWL_SHARDS", "4"), ("BBCRAWL_SHARD_INDEX", "3")];
    assert_eq!(shard_of("", &statefulset, None), Ok(Some("3/4".into())));
    let job = [("BBCRAWL_SHARDS", "8"), ("JOB_COMPLETION_INDEX", "5")];
    assert_eq!(shard_of("", &job, None), Ok(Some("5/8".into())));
    // Our own variable beats the Job's.
    let both = [
        ("BBCRAWL_SHARDS", "8"),
        ("JOB_COMPLETION_INDEX", "5"),
        ("BBCRAWL_SHARD_INDEX", "6"),
    ];
    assert_eq!(shard_of("", &both, None), Ok(Some("6/8".into())));
    // The pair is the environment's value: it beats the file, BBCRAWL_SHARD
    // and the flag beat it.
    assert_eq!(
        shard_of("shard = \"0/2\"\n", &statefulset, None),
        Ok(Some("3/4".into()))
    );
    let mut with_shard = statefulset.to_vec();
    with_shard.push(("BBCRAWL_SHARD", "1/2"));
    assert_eq!(shard_of("", &with_shard, None), Ok(Some("1/2".into())));
    assert_eq!(
        shard_of("", &statefulset, Some("0/3")),
        Ok(Some("0/3".into()))
    );
    // Kubernetes sets JOB_COMPLETION_INDEX in every indexed Job: alone it
    // means nothing.
    assert_eq!(
        shard_of("", &[("JOB_COMPLETION_INDEX", "2")], None),
        Ok(None)
    );
    // A broken pair does not matter when a higher source sets the shard.
    assert_eq!(
        shard_of(
            "",
            &[("BBCRAWL_SHARDS", "4"), ("BBCRAWL_SHARD", "1/4")],
            None
        ),
        Ok(Some("1/4".into()))
    );
}

/// A config file, an environment, a `--shard` flag and the error they give.
type ShardCase = (
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
    &'static str,
);

#[test]
fn bad_shards_name_the_key_and_where_they_were_set() {
    let cases: [ShardCase; 11] = [
        (
            "shard = \"4/4\"\n",
            &[],
            None,
            "invalid value for `shard` (from FILE): the shard index must be below the number of shards, 4 (shards are numbered from 0: 0 to 3) (got 4)",
        ),
        (
            "",
            &[("BBCRAWL_SHARD", "1-4")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARD): must be I/N, the shard index and the number of shards (such as 0/4; shards are numbered from 0) (got \"1-4\")",
        ),
        (
            "",
            &[],
            Some("0/0"),
            "invalid value for `shard` (from --shard): the number of shards must be between 1 and 1024 (got 0)",
        ),
        (
            "",
            &[("BBCRAWL_SHARD", "0/2048")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARD): the number of shards must be between 1 and 1024 (got 2048)",
        ),
        (
            "",
            &[("BBCRAWL_SHARDS", "4")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARDS): BBCRAWL_SHARDS is set but no shard index is: set BBCRAWL_SHARD_INDEX (in a StatefulSet, from the pod-index label `apps.kubernetes.io/pod-index` through the downward API; Kubernetes 1.28 or later sets it), run as an indexed Job (JOB_COMPLETION_INDEX), or set BBCRAWL_SHARD=I/N",
        ),
        (
            // The downward API gives an empty value when the label is missing.
            "",
            &[("BBCRAWL_SHARDS", "4"), ("BBCRAWL_SHARD_INDEX", "")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARDS): BBCRAWL_SHARDS is set but no shard index is",
        ),
        (
            "",
            &[("BBCRAWL_SHARD_INDEX", "1")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARD_INDEX): BBCRAWL_SHARD_INDEX needs BBCRAWL_SHARDS, the number of shards (a StatefulSet's replicas)",
        ),
        (
            "",
            &[("BBCRAWL_SHARDS", "4"), ("BBCRAWL_SHARD_INDEX", "bbcrawl-2")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARD_INDEX and BBCRAWL_SHARDS): BBCRAWL_SHARD_INDEX must be a whole number (got \"bbcrawl-2\")",
        ),
        (
            "",
            &[("BBCRAWL_SHARDS", "four"), ("BBCRAWL_SHARD_INDEX", "1")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARD_INDEX and BBCRAWL_SHARDS): BBCRAWL_SHARDS must be a whole number (got \"four\")",
        ),
        (
            "",
            &[("BBCRAWL_SHARDS", "4"), ("JOB_COMPLETION_INDEX", "4")],
            None,
            "invalid value for `shard` (from JOB_COMPLETION_INDEX and BBCRAWL_SHARDS): JOB_COMPLETION_INDEX: the shard index must be below the number of shards, 4 (shards are numbered from 0: 0 to 3) (got 4)",
        ),
        (
            "",
            &[("BBCRAWL_SHARDS", "0"), ("BBCRAWL_SHARD_INDEX", "0")],
            None,
            "invalid value for `shard` (from BBCRAWL_SHARD_INDEX and BBCRAWL_SHARDS): BBCRAWL_SHARDS: the number of shards must be between 1 and 1024 (got 0)",
        ),
    ];
    for (toml, env, flag, want) in cases {
        let got = shard_of(toml, env, flag).expect_err(want);
        assert!(
            got.starts_with(want),
            "{toml:?} {env:?} {flag:?}:\n got {got}\nwant {want}"
        );
    }
    // A number where a string belongs is the file's type error, naming the key.
    let err = error_text("shard = 1\n");
    assert!(err.contains("`shard`"), "{err}");
}
