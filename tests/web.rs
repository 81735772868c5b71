//! The daemon's endpoint behind TLS and basic auth (issue 15), through the
//! real binary: certificates made with openssl by the README's own first-
//! install commands, requests made with curl, a real Prometheus scraping
//! over TLS with a password.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use bbcrawl::simulator::RepoSpec;

use crate::util::*;

/// The test password and user.
const USER: &str = "prometheus";
const PASSWORD: &str = "correct horse battery staple";

/// Runs a program and returns its output; panics if it cannot start.
fn run(program: &str, args: &[&str], dir: &Path) -> std::process::Output {
    std::process::Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs openssl with `args` in `dir`; panics on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let o = run("openssl", args, dir);
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A CA (`ca.crt`, `ca.key`) in `dir`, made as the README says.
fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3650",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=bbcrawl CA",
        ],
    );
}

/// A certificate `NAME.crt` / `NAME.key` signed by the CA in `dir`, for
/// localhost and 127.0.0.1, with `serial` and `usage` (serverAuth or
/// clientAuth).
fn make_cert(dir: &Path, name: &str, serial: u32, usage: &str) {
    let (key, csr, crt, ext) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
        format!("{name}.ext"),
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(
        dir.join(&ext),
        format!("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial.to_string(),
            "-days",
            "30",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
}

/// The serial number the TLS endpoint at `addr` presents (openssl
/// s_client, then x509), as openssl prints it (`serial=2A`).
fn served_serial(addr: &str, dir: &Path) -> String {
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// A directory with a CA, a server certificate (serial 1) and key, a
/// client certificate, and a web config using them with basic auth.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new(extra_tls: &str) -> Pki {
        Pki::with_cost(extra_tls, 10)
    }

    /// [`Pki::new`] with the password hashed at bcrypt `cost`.
    fn with_cost(extra_tls: &str, cost: u32) -> Pki {
        let dir = tempfile::tempdir().unwrap();
        make_ca(dir.path());
        make_cert(dir.path(), "server", 1, "serverAuth");
        make_cert(dir.path(), "client", 7, "clientAuth");
        let hash = bcrypt::hash(PASSWORD, cost).unwrap();
        std::fs::write(
            dir.path().join("web.yml"),
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n{extra_tls}basic_auth_users:\n  {USER}: {hash}\nhttp_server_config:\n  headers:\n    Strict-Transport-Security: max-age=600\n"
            ),
        )
        .unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn web_config(&self) -> String {
        self.path("web.yml").to_string_lossy().into_owned()
    }
}

/// A running `bbcrawl run` with `env`.
struct Daemon {
    child: tokio::process::Child,
    addr: String,
    log: PathBuf,
}

impl Daemon {
    async fn start(store: &Path, api_url: &str, env: &[(&str, &str)]) -> Daemon {
        let (mut cmd, log) = run_command(store, api_url, "1", env);
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(store.join("daemon.json")) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                let addr = v["addr"].as_str().unwrap().to_owned();
                return Daemon { child, addr, log };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "bbcrawl run exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "no daemon.json within 20 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its port.
    fn port(&self) -> &str {
        self.addr.rsplit(':').next().unwrap()
    }

    /// `https://localhost:PORT` (the name the test certificates hold).
    fn base(&self) -> String {
        format!("https://localhost:{}", self.port())
    }
}

/// A simulator of `repos`, served, and a daemon crawling it into a fresh
/// store with `env` (kept alive together).
struct Setup {
    _server: bbcrawl::simulator::SimServer,
    _dir: tempfile::TempDir,
    store: PathBuf,
    daemon: Daemon,
}

async fn setup(repos: &[(&str, usize)], env: &[(&str, &str)]) -> Setup {
    let sim = world(0);
    for (slug, commits) in repos {
        sim.add_repo(WS, RepoSpec::new(slug, *commits));
    }
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    let daemon = Daemon::start(&store, &server.api_url(), env).await;
    Setup {
        _server: server,
        _dir: dir,
        store,
        daemon,
    }
}

/// `bbcrawl --store STORE ARGS…` as the store's owner would run it while
/// the daemon holds the store: exit 0, its output.
async fn cli(store: &Path, args: &[&str]) -> std::process::Output {
    let s = store.to_str().unwrap();
    let mut all = vec!["--store", s];
    all.extend_from_slice(args);
    let o = bbcrawl(store.parent().unwrap(), &all, &[]).await;
    assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
    o
}

/// curl `url` with `args`: (exit code, HTTP status or 0, headers, body).
fn curl(args: &[&str], url: &str) -> (i32, u16, String, String) {
    let mut all = vec!["-sS", "--max-time", "10", "-D", "-", "-o", "-"];
    all.extend_from_slice(args);
    all.push(url);
    let o = run("curl", &all, Path::new("/"));
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (
        o.status.code().unwrap_or(-1),
        status,
        head.to_owned(),
        body.to_owned(),
    )
}

/// The sum of a metric's samples in a scrape.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// curl with the CA and the right password gets /metrics, /healthz and the
/// API; without a password, with a wrong one, or with an unknown user: 401
/// with `WWW-Authenticate` and no data (counted by reason); plain HTTP to
/// the TLS port gets nothing; every answer carries the security headers and
/// the web config's own; `query` through the daemon prints the same bytes
/// as on the store itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_basic_auth_guard_every_path() {
    let pki = Pki::new("");
    let wc = pki.web_config();
    let Setup {
        store,
        daemon,
        _server,
        _dir,
    } = setup(
        &[("web", 140), ("api", 60)],
        &[("BBCRAWL_WEB_CONFIG_FILE", &wc)],
    )
    .await;
    let base = daemon.base();
    let ca = pki.path("ca.crt");
    let ca = ca.to_str().unwrap();
    let user = format!("{USER}:{PASSWORD}");
    // Until the first pass has stored everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, status, _, body) = curl(
            &["--cacert", ca, "-u", &user],
            &format!("{base}/api/v1/stats?format=json"),
        );
        if status == 200 && body.contains("\"commits\":200") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{status} {body}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for path in ["/metrics", "/healthz", "/api/v1/stats"] {
        let (code, status, head, body) =
            curl(&["--cacert", ca, "-u", &user], &format!("{base}{path}"));
        assert_eq!((code, status), (0, 200), "{path}: {head}{body}");
        let head = head.to_ascii_lowercase();
        assert!(
            head.contains("x-content-type-options: nosniff"),
            "{path}: {head}"
        );
        assert!(head.contains("cache-control: no-store"), "{path}: {head}");
        assert!(
            head.contains("strict-transport-security: max-age=600"),
            "{path}: {head}"
        );
    }
    for (what, args) in [
        ("no password", vec!["--cacert", ca]),
        (
            "a wrong password",
            vec!["--cacert", ca, "-u", "prometheus:wrong"],
        ),
        (
            "an unknown user",
            vec!["--cacert", ca, "-u", "grafana:correct horse battery staple"],
        ),
    ] {
        for path in ["/metrics", "/healthz", "/api/v1/stats", "/api/v1/export"] {
            let (code, status, head, body) = curl(&args, &format!("{base}{path}"));
            assert_eq!((code, status), (0, 401), "{what} {path}: {head}{body}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: basic realm=\"bbcrawl\""),
                "{what} {path}: {head}"
            );
            assert!(
                !body.contains("commits") && !body.contains("bbcrawl_"),
                "{what} {path}: {body}"
            );
        }
    }
    // Plain HTTP to the TLS port: the handshake fails, nothing comes back.
    let (code, status, _, body) = curl(
        &["-u", &user],
        &format!("http://{}/api/v1/stats", daemon.addr),
    );
    assert_ne!(code, 0);
    assert_eq!(status, 0);
    assert!(!body.contains("commits"), "{body}");
    // Without the CA, curl refuses the certificate.
    let (code, _, _, _) = curl(&["-u", &user], &format!("{base}/metrics"));
    assert_ne!(code, 0, "a certificate curl does not trust was accepted");
    let (_, _, _, text) = curl(&["--cacert", ca, "-u", &user], &format!("{base}/metrics"));
    assert_eq!(
        metric(
            &text,
            "bbcrawl_http_auth_failures_total",
            "reason=\"missing\""
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "bbcrawl_http_auth_failures_total",
            "reason=\"wrong\""
        ),
        8.0
    );
    assert!(
        metric(&text, "bbcrawl_http_tls_handshake_failures_total", "") >= 2.0,
        "{text}"
    );

    // The CLI reaches its daemon through TLS and auth: same bytes as the
    // store itself gives once the daemon has stopped.
    let questions: [&[&str]; 3] = [
        &["query", "commits", "--format", "ndjson", "--limit", "30"],
        &["export", "--format", "csv"],
        &["query", "authors"],
    ];
    let mut through_daemon = Vec::new();
    for q in questions {
        through_daemon.push(cli(&store, q).await.stdout);
    }
    let daemon_json = std::fs::read_to_string(store.join("daemon.json")).unwrap();
    assert!(!daemon_json.contains(PASSWORD), "{daemon_json}");
    let mut child = daemon.child;
    let pid = child.id().unwrap().to_string();
    assert!(run("kill", &["-TERM", &pid], Path::new("/"))
        .status
        .success());
    assert!(child.wait().await.unwrap().success());
    for (q, want) in questions.iter().zip(through_daemon) {
        assert_eq!(
            cli(&store, q).await.stdout,
            want,
            "{q:?}: the daemon's bytes differ from the store's"
        );
    }
}

/// Client certificates: with `RequireAndVerifyClientCert`, curl without a
/// client certificate fails the handshake; with one the CA signed, it gets
/// in (and still needs the password).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_is_required() {
    let pki =
        Pki::new("  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n");
    let wc = pki.web_config();
    let Setup {
        store,
        daemon,
        _server,
        _dir,
    } = setup(&[("web", 20)], &[("BBCRAWL_WEB_CONFIG_FILE", &wc)]).await;
    let url = format!("{}/metrics", daemon.base());
    let ca = pki.path("ca.crt");
    let (cert, key) = (pki.path("client.crt"), pki.path("client.key"));
    let user = format!("{USER}:{PASSWORD}");
    let (code, status, _, body) = curl(&["--cacert", ca.to_str().unwrap(), "-u", &user], &url);
    assert_ne!(code, 0, "no client certificate, yet {status}: {body}");
    assert!(!body.contains("bbcrawl_"));
    let with_cert = [
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    let mut args = with_cert.to_vec();
    args.extend(["-u", &user]);
    let (code, status, _, body) = curl(&args, &url);
    assert_eq!((code, status), (0, 200), "{body}\n{}", daemon.logs());
    let (code, status, _, _) = curl(&with_cert, &url);
    assert_eq!((code, status), (0, 401), "a certificate is not a password");
    // The CLI presents the daemon's local client certificate.
    let o = cli(&store, &["query", "repos"]).await;
    assert!(stdout(&o).contains("web"), "{}", stdout(&o));
}

/// Replacing the certificate and key files while the daemon runs: the next
/// connection is served the new certificate (its serial), without a
/// restart; the CLI keeps reaching the daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let pki = Pki::new("");
    let wc = pki.web_config();
    let Setup {
        store,
        daemon,
        _server,
        _dir,
    } = setup(&[("web", 20)], &[("BBCRAWL_WEB_CONFIG_FILE", &wc)]).await;
    assert_eq!(served_serial(&daemon.addr, pki.dir.path()), "serial=01");
    // The renewal, as certbot or an admin would: new files moved in place.
    make_cert(pki.dir.path(), "renewed", 0x2a, "serverAuth");
    std::fs::rename(pki.path("renewed.key"), pki.path("server.key")).unwrap();
    std::fs::rename(pki.path("renewed.crt"), pki.path("server.crt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let serial = served_serial(&daemon.addr, pki.dir.path());
        if serial == "serial=2A" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {serial}\n{}",
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    cli(&store, &["query", "stats"]).await;
    drop(daemon);
}

/// `api = false`: `/api/v1/*` is not found, `/metrics` still served, and
/// the CLI (local token) still gets its answers. `health_without_auth`:
/// `/healthz` without a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_false_serves_metrics_only() {
    let pki = Pki::new("");
    let config = pki.path("bbcrawl.toml");
    std::fs::write(&config, "api = false\nhealth_without_auth = true\n").unwrap();
    let (wc, cf) = (pki.web_config(), config.to_string_lossy().into_owned());
    let Setup {
        store,
        daemon,
        _server,
        _dir,
    } = setup(
        &[("web", 20)],
        &[("BBCRAWL_WEB_CONFIG_FILE", &wc), ("BBCRAWL_CONFIG", &cf)],
    )
    .await;
    let base = daemon.base();
    let ca = pki.path("ca.crt");
    let ca = ca.to_str().unwrap();
    let user = format!("{USER}:{PASSWORD}");
    for path in ["/api/v1/stats", "/api/v1/export", "/api/v1/commits?limit=1"] {
        let (_, status, _, body) = curl(&["--cacert", ca, "-u", &user], &format!("{base}{path}"));
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("commits\":"), "{body}");
    }
    let (_, status, _, _) = curl(&["--cacert", ca, "-u", &user], &format!("{base}/metrics"));
    assert_eq!(status, 200);
    let (_, status, _, body) = curl(&["--cacert", ca], &format!("{base}/healthz"));
    assert_eq!(status, 200, "{body}");
    let (_, status, _, _) = curl(&["--cacert", ca], &format!("{base}/metrics"));
    assert_eq!(status, 401);
    cli(&store, &["query", "repos"]).await;
    drop(daemon);
}

/// `bbcrawl run` with a `listen` and web config: exit 2 with a clear word
/// for each mistake, before it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_mistakes_are_exit_2_before_start() {
    let pki = Pki::new("");
    make_cert(pki.dir.path(), "other", 3, "serverAuth");
    std::fs::write(pki.path("garbage.crt"), "not a certificate\n").unwrap();
    let tls = |cert: &str, key: &str, extra: &str| {
        format!("tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n{extra}")
    };
    let sim = world(0);
    let server = serve(&sim).await;
    let (dir, store) = fresh_store();
    let (api, s) = (server.api_url(), store.to_string_lossy().into_owned());
    // (what, listen, web config text or none, flag or env, words in the error)
    type Case<'a> = (&'a str, &'a str, Option<String>, bool, &'a [&'a str]);
    let cases: [Case; 4] = [
        (
            "non-loopback without a web config",
            "0.0.0.0:0",
            None,
            false,
            &["refusing to listen on 0.0.0.0:0", "insecure_listen = true"],
        ),
        (
            "a key the toolkit does not have",
            "127.0.0.1:0",
            Some(tls("server.crt", "server.key", "  client_auth: x\n")),
            true,
            &["client_auth"],
        ),
        (
            "a key that is not the certificate's",
            "127.0.0.1:0",
            Some(tls("server.crt", "other.key", "")),
            false,
            &["other.key"],
        ),
        (
            "a certificate file that is not one",
            "127.0.0.1:0",
            Some(tls("garbage.crt", "server.key", "")),
            false,
            &["garbage.crt"],
        ),
    ];
    for (n, (what, listen, web, flag, words)) in cases.into_iter().enumerate() {
        let file = pki.path(&format!("case-{n}.yml"));
        let file = file.to_string_lossy().into_owned();
        let mut env = vec![
            ("BBCRAWL_API_URL", api.as_str()),
            ("BBCRAWL_WORKSPACES", WS),
            ("BITBUCKET_ACCESS_TOKEN", TOKEN),
            ("BBCRAWL_STORE", s.as_str()),
            ("BBCRAWL_LISTEN", listen),
        ];
        let mut args = vec!["run"];
        if let Some(text) = &web {
            std::fs::write(&file, text).unwrap();
            match flag {
                true => args.extend(["--web.config.file", file.as_str()]),
                false => env.push(("BBCRAWL_WEB_CONFIG_FILE", file.as_str())),
            }
        }
        let o = tokio::time::timeout(Duration::from_secs(20), bbcrawl(dir.path(), &args, &env))
            .await
            .expect("bbcrawl run did not exit");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        assert!(words.iter().all(|w| err.contains(w)), "{what}: {err}");
        assert!(!store.join("daemon.json").exists(), "{what}");
    }
}

/// `insecure_listen = true`: a non-loopback `listen` without a web config
/// starts, and says what it exposes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_listen_starts_and_warns() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bbcrawl.toml");
    std::fs::write(&config, "insecure_listen = true\n").unwrap();
    let cf = config.to_string_lossy().into_owned();
    let Setup {
        daemon,
        _server,
        _dir,
        ..
    } = setup(
        &[("web", 5)],
        &[("BBCRAWL_CONFIG", &cf), ("BBCRAWL_LISTEN", "0.0.0.0:0")],
    )
    .await;
    let port = daemon.port();
    let (_, status, _, _) = curl(&[], &format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(status, 200, "{}", daemon.logs());
    let logs = daemon.logs();
    assert!(
        logs.contains("is not loopback and there is no web_config_file"),
        "{logs}"
    );
}

/// 1,000 requests with wrong passwords in a loop (four at a time): the
/// daemon keeps answering a correct scrape (p99 under 100 ms, its login
/// remembered) and its memory stays flat. The hash has cost 8 so that the
/// thousand checks (one at a time, by design) take 15 s, not a minute;
/// with cost 10 the figures are the same (README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_flood_does_not_stop_the_scrapes() {
    let pki = Pki::with_cost("", 8);
    let wc = pki.web_config();
    let Setup {
        daemon,
        _server,
        _dir,
        ..
    } = setup(&[("web", 50)], &[("BBCRAWL_WEB_CONFIG_FILE", &wc)]).await;
    let pid = daemon.child.id().unwrap();
    let port = daemon.port();
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.crt")).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let url = format!("https://localhost:{port}/metrics");
    // The first correct scrape pays for bcrypt, once.
    let first = Instant::now();
    let r = http
        .get(&url)
        .basic_auth(USER, Some(PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    eprintln!(
        "first scrape (bcrypt): {:.1} ms",
        first.elapsed().as_secs_f64() * 1e3
    );
    let rss_before = rss_kib(pid);
    let attack = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let mut refused = 0;
            let mut tasks = tokio::task::JoinSet::new();
            for worker in 0..4 {
                let (http, url) = (http.clone(), url.clone());
                tasks.spawn(async move {
                    let mut n = 0;
                    for i in 0..250 {
                        let r = http
                            .get(&url)
                            .basic_auth(USER, Some(format!("guess-{worker}-{i}")))
                            .send()
                            .await
                            .unwrap();
                        assert!(matches!(r.status().as_u16(), 401 | 429), "{}", r.status());
                        n += 1;
                    }
                    n
                });
            }
            while let Some(n) = tasks.join_next().await {
                refused += n.unwrap();
            }
            refused
        })
    };
    let mut times = Vec::new();
    while !attack.is_finished() {
        let t = Instant::now();
        let r = http
            .get(&url)
            .basic_auth(USER, Some(PASSWORD))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(attack.await.unwrap(), 1000);
    times.sort_by(f64::total_cmp);
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    let rss_after = rss_kib(pid);
    eprintln!(
        "{} correct scrapes during 1,000 wrong passwords: median {:.1} ms, p99 {p99:.1} ms; RSS {rss_before} → {rss_after} KiB",
        times.len(),
        times[times.len() / 2]
    );
    assert!(
        times.len() >= 10,
        "only {} scrapes during the attack",
        times.len()
    );
    assert!(p99 < 100.0, "p99 {p99:.1} ms");
    assert!(
        rss_after < rss_before + 20 * 1024,
        "RSS {rss_before} → {rss_after} KiB"
    );
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A real Prometheus scrapes the daemon over TLS with basic auth (the
/// job of config/prometheus/scrape-tls.yml, pointed at this daemon): `up`
/// is 1 and `bbcrawl_store_commits` equals the simulator's commit count.
/// The same job with a wrong password: `up` is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_over_tls_with_basic_auth() {
    let Some(prometheus) =
        crate::kit::find_tool("prometheus_scrapes_over_tls_with_basic_auth", "prometheus")
    else {
        return;
    };
    let pki = Pki::new("");
    let sim = world(0);
    sim.add_repo(WS, RepoSpec::new("web", 130));
    sim.add_repo(WS, RepoSpec::new("api", 41));
    let expected =
        (sim.branch_commits(WS, "web").len() + sim.branch_commits(WS, "api").len()) as f64;
    let server = serve(&sim).await;
    let (_dir, store) = fresh_store();
    let wc = pki.web_config();
    let daemon = Daemon::start(
        &store,
        &server.api_url(),
        &[("BBCRAWL_WEB_CONFIG_FILE", &wc)],
    )
    .await;
    let port = daemon.port();
    // The shipped job, with this test's CA, password and target.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheus/scrape-tls.yml"),
    )
    .unwrap();
    let job = |password: &str| {
        let file = pki.path(&format!("password-{}", password.len()));
        std::fs::write(&file, password).unwrap();
        let yaml = shipped
            .split_once("scrape_configs:\n")
            .unwrap()
            .1
            .replace(
                "/etc/prometheus/bbcrawl-ca.crt",
                pki.path("ca.crt").to_str().unwrap(),
            )
            .replace("/etc/prometheus/bbcrawl.password", file.to_str().unwrap())
            .replace(
                "bbcrawl.example.internal:9490",
                &format!("localhost:{port}"),
            )
            .replace("scrape_interval: 30s", "scrape_interval: 1s")
            .replace("scrape_timeout: 10s", "scrape_timeout: 1s");
        yaml
    };
    let prom = crate::kit::Prometheus::start_job(&prometheus, &job(PASSWORD)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = prom.value("up{job=\"bbcrawl\"}").await;
        let commits = prom.value("bbcrawl_store_commits").await;
        if up == Some(1.0) && commits == Some(expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "up {up:?}, commits {commits:?} (want {expected})\n--- prometheus:\n{}\n--- bbcrawl:\n{}",
            prom.log(),
            daemon.logs()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(prom);
    let prom = crate::kit::Prometheus::start_job(&prometheus, &job("not the password")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = prom.value("up{job=\"bbcrawl\"}").await;
        if up == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "up {up:?} with a wrong password\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(prom.value("bbcrawl_store_commits").await, None);
}
