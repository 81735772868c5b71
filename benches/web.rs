//! What a Prometheus scrape of `bbcrawl run` costs behind TLS and basic
//! auth (issue 15), against the same daemon without them, in one run.
//!
//! Two daemons (the release binary) crawl the same simulated workspace into
//! their own stores: one with a web config (TLS with an ECDSA P-256
//! certificate, one `basic_auth_users` entry hashed at bcrypt cost 10), one
//! plain on loopback. Then, for each, `GET /metrics` from one client:
//! - the first scrape (TLS handshake and, with auth, the one bcrypt check);
//! - BBCRAWL_BENCH_SCRAPES more over a kept-alive connection, as Prometheus
//!   scrapes (its connections are kept alive): median, p99, mean;
//! - the same number each on a new connection (a full handshake each; the
//!   login remembered).
//!
//! Times are measured at the client, so they bound the server's time from
//! above (loopback adds little). Output: `key: value unit` lines.
//!
//!   cargo bench --bench web

#[path = "common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bbcrawl::demo::BackgroundSimulator;
use bbcrawl::simulator::SimOptions;

const USER: &str = "prometheus";
const PASSWORD: &str = "bench password";

/// A CA and a server certificate for 127.0.0.1 and localhost, PEM, in
/// `dir`: returns the CA certificate.
fn pki(dir: &Path) -> Vec<u8> {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "bench CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    ca_cert.pem().into_bytes()
}

/// Starts `bbcrawl run` on a fresh store; returns it and its base URL once
/// its first pass is done.
fn daemon(name: &str, api_url: &str, web_config: Option<&Path>) -> (Child, String) {
    let dir = common::fresh_dir(name);
    let store = dir.join("store");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bbcrawl"));
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BBCRAWL_API_URL", api_url)
        .env("BBCRAWL_WORKSPACES", common::WS)
        .env("BITBUCKET_ACCESS_TOKEN", common::ACCESS_TOKEN)
        .env("BBCRAWL_STORE", &store)
        .env("BBCRAWL_LISTEN", "127.0.0.1:0")
        .env("BBCRAWL_INTERVAL_SECONDS", "86400")
        .env("BBCRAWL_REQUESTS_PER_HOUR", "1000000")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("daemon.log")).unwrap());
    if let Some(wc) = web_config {
        cmd.env("BBCRAWL_WEB_CONFIG_FILE", wc);
    }
    let mut child = cmd.spawn().expect("spawn bbcrawl run");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(text) = std::fs::read_to_string(store.join("daemon.json")) {
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let port = v["addr"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .to_owned();
            let scheme = if web_config.is_some() {
                "https"
            } else {
                "http"
            };
            return (child, format!("{scheme}://localhost:{port}"));
        }
        if let Ok(Some(s)) = child.try_wait() {
            panic!(
                "{name}: bbcrawl run exited {s}: {}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{name}: no daemon.json");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One scrape: milliseconds.
async fn scrape(http: &reqwest::Client, url: &str, auth: bool) -> f64 {
    let t = Instant::now();
    let mut rb = http.get(url);
    if auth {
        rb = rb.basic_auth(USER, Some(PASSWORD));
    }
    let resp = rb.send().await.expect("scrape");
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap();
    t.elapsed().as_secs_f64() * 1e3
}

/// Median, p99 and mean of `ms`.
fn stats(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    (
        ms[n / 2],
        ms[(n * 99 / 100).min(n - 1)],
        ms.iter().sum::<f64>() / n as f64,
    )
}

fn main() {
    let n: usize = common::env_num("BBCRAWL_BENCH_SCRAPES", 500);
    let sim = common::simulator(SimOptions::default(), 20, 100);
    let server = BackgroundSimulator::start(sim).expect("serve the simulator");
    let dir = common::fresh_dir("web-pki");
    let ca = pki(&dir);
    let hash = bcrypt::hash(PASSWORD, 10).unwrap();
    let wc = dir.join("web.yml");
    std::fs::write(
        &wc,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  {USER}: {hash}\n"
        ),
    )
    .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("web: GET /metrics, {n} scrapes per figure; client-side times (an upper bound of the server's)");
    for (label, web_config) in [("plain", None), ("tls_auth", Some(wc.as_path()))] {
        let (mut child, base) = daemon(&format!("web-{label}"), server.api_url(), web_config);
        let url = format!("{base}/metrics");
        let auth = web_config.is_some();
        let client = |keep_alive: bool| {
            let mut b = reqwest::Client::builder()
                .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap());
            if !keep_alive {
                b = b.pool_max_idle_per_host(0);
            }
            b.build().unwrap()
        };
        rt.block_on(async {
            let kept = client(true);
            let first = scrape(&kept, &url, auth).await;
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                times.push(scrape(&kept, &url, auth).await);
            }
            let (median, p99, mean) = stats(times);
            let fresh = client(false);
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                times.push(scrape(&fresh, &url, auth).await);
            }
            let (c_median, c_p99, c_mean) = stats(times);
            println!("{label}_first_scrape_ms: {first:.2} ms");
            println!("{label}_scrape_median_ms: {median:.3} ms");
            println!("{label}_scrape_p99_ms: {p99:.3} ms");
            println!("{label}_scrape_mean_ms: {mean:.3} ms");
            println!("{label}_new_connection_scrape_median_ms: {c_median:.3} ms");
            println!("{label}_new_connection_scrape_p99_ms: {c_p99:.3} ms");
            println!("{label}_new_connection_scrape_mean_ms: {c_mean:.3} ms");
        });
        let _ = child.kill();
        let _ = child.wait();
    }
}
