//! The SSRF guard against loopback servers: rejected by default, literal hosts in every form,
//! names through an injected resolver, redirects, and the allow settings. Every server here
//! counts its requests, so a test shows that nothing reached a rejected destination. Addresses
//! outside loopback (private ranges, cloud metadata) are only checked, never connected to.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use capfilt::fetch::{locate, DownloadConfig, FetchError, Fetcher};
use capfilt::net_guard::DnsError;
use capfilt::status::RowStatus;
use common::*;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A server that serves `body` at `/image`, `body` with `X-Robots-Tag: noai` at `/opted-out`,
/// and redirects `/redirect?to=URL` to `URL`, counting every request.
struct CountingServer {
    server: TestServer,
    requests: Arc<AtomicUsize>,
}

impl CountingServer {
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn port(&self) -> u16 {
        self.server.addr.port()
    }
}

fn counting_router(body: &'static str, requests: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route("/image", get(move |State(count): State<Arc<AtomicUsize>>| async move {
            count.fetch_add(1, Ordering::SeqCst);
            body
        }))
        .route("/opted-out", get(move |State(count): State<Arc<AtomicUsize>>| async move {
            count.fetch_add(1, Ordering::SeqCst);
            ([("x-robots-tag", "noai")], body)
        }))
        .route("/redirect", get(redirect))
        .with_state(requests)
}

async fn redirect(
    State(count): State<Arc<AtomicUsize>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    count.fetch_add(1, Ordering::SeqCst);
    Redirect::to(&query["to"]).into_response()
}

fn counting_server(body: &'static str) -> CountingServer {
    let requests = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(counting_router(body, requests.clone()));
    CountingServer { server, requests }
}

/// A counting server on another loopback address, or `None` where the system has only
/// 127.0.0.1 (such tests then return early).
fn counting_server_at(bind: &str, body: &'static str) -> Option<CountingServer> {
    let requests = Arc::new(AtomicUsize::new(0));
    let server = start_server_at(bind, counting_router(body, requests.clone()))?;
    Some(CountingServer { server, requests })
}

/// Runs `test` on a runtime of its own that is shut down before the caller's servers are
/// dropped. The runtime drives the client's connections, and a server's graceful shutdown waits
/// for them to close, so dropping a server inside the runtime would hang.
fn block_on<F: std::future::Future>(test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let output = runtime.block_on(test);
    runtime.shutdown_timeout(Duration::from_secs(1));
    output
}

fn config() -> DownloadConfig {
    DownloadConfig { timeout_secs: 3.0, connect_timeout_secs: 2.0, retries: 0, ..Default::default() }
}

async fn fetch(fetcher: &Fetcher, url: &str) -> Result<Vec<u8>, FetchError> {
    fetcher.fetch(&locate(url, None).unwrap()).await
}

/// Maps invented names to fixed loopback addresses without any network lookup; other names
/// are not found.
struct MapResolver(Vec<(&'static str, Vec<SocketAddr>)>);

impl Resolve for MapResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let found = self.0.iter().find(|(known, _)| *known == name.as_str()).map(|(_, addrs)| addrs.clone());
        let name = name.as_str().to_string();
        Box::pin(async move {
            match found {
                Some(addrs) => Ok(Box::new(addrs.into_iter()) as Addrs),
                None => Err(DnsError::NotFound { name, message: "test resolver: no such name".into() }.into()),
            }
        })
    }
}

fn resolver(entries: &[(&'static str, &[&str])]) -> Arc<MapResolver> {
    let entries = entries
        .iter()
        .map(|(name, ips)| (*name, ips.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 0)).collect()))
        .collect();
    Arc::new(MapResolver(entries))
}

#[test]
fn default_rejects_loopback_literal() {
    let server = counting_server("image");
    block_on(async {
        let fetcher = Fetcher::new(config()).unwrap();

        let error = fetch(&fetcher, &server.server.url("image")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Blocked, "{error:?}");
        assert_eq!(error.status.as_str(), "blocked_address");
        assert!(error.message.contains("127.0.0.1 is in a forbidden range (loopback)"), "{}", error.message);
        assert!(!error.transient);
        assert_eq!(server.requests(), 0);
    });
}

#[test]
fn default_rejects_other_loopback_spellings() {
    let server = counting_server("image");
    block_on(async {
        let fetcher = Fetcher::new(config()).unwrap();
        let port = server.port();

        // Every spelling names loopback, so even a failing guard would send nothing elsewhere.
        for host in ["[::ffff:127.0.0.1]", "2130706433", "0x7f.1", "127.1", "[::1]"] {
            let error = fetch(&fetcher, &format!("http://{host}:{port}/image")).await.unwrap_err();
            assert_eq!(error.status, RowStatus::Blocked, "{host}: {error:?}");
        }
        assert_eq!(server.requests(), 0);
    });
}

#[test]
fn default_rejects_names_resolving_to_loopback() {
    let server = counting_server("image");
    block_on(async {
        let fetcher = Fetcher::with_resolver(config(), resolver(&[("img.test", &["127.0.0.1"])])).unwrap();

        let error = fetch(&fetcher, &format!("http://img.test:{}/image", server.port())).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Blocked, "{error:?}");
        assert!(error.message.contains("img.test resolved to 127.0.0.1"), "{}", error.message);
        assert_eq!(server.requests(), 0);
    });
}

#[test]
fn allow_flag_serves_loopback() {
    let server = counting_server("image");
    block_on(async {
        let config = DownloadConfig { allow_private_networks: true, ..config() };
        let fetcher = Fetcher::with_resolver(config, resolver(&[("img.test", &["127.0.0.1"])])).unwrap();

        assert_eq!(fetch(&fetcher, &server.server.url("image")).await.unwrap(), b"image");
        assert_eq!(fetch(&fetcher, &format!("http://img.test:{}/image", server.port())).await.unwrap(), b"image");
        assert_eq!(server.requests(), 2);
    });
}

#[test]
fn allow_flag_keeps_metadata_rejected() {
    block_on(async {
        let fetcher = Fetcher::new(DownloadConfig { allow_private_networks: true, ..config() }).unwrap();

        // Only the check runs here: these addresses must never receive a request from a test.
        for url in ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest", "http://[::ffff:a9fe:a9fe]/"] {
            let error = fetcher.check_url(&url.parse().unwrap()).unwrap_err();
            assert_eq!(error.status, RowStatus::Blocked, "{url}");
            assert!(error.message.contains("cloud metadata service"), "{}", error.message);
        }
        assert!(fetcher.check_url(&"http://10.0.0.1/a.jpg".parse().unwrap()).is_ok());
    });
}

#[test]
fn allowed_cidr_opens_only_its_block() {
    let Some(other) = counting_server_at("127.0.0.2:0", "other") else {
        eprintln!("127.0.0.2 cannot be bound here; skipping");
        return;
    };
    let server = counting_server("image");
    block_on(async {
        let fetcher = Fetcher::new(DownloadConfig { allowed_cidrs: vec!["127.0.0.1/32".into()], ..config() }).unwrap();

        assert_eq!(fetch(&fetcher, &server.server.url("image")).await.unwrap(), b"image");
        let error = fetch(&fetcher, &other.server.url("image")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Blocked, "{error:?}");
        assert_eq!(other.requests(), 0);
    });
}

#[test]
fn redirect_to_rejected_literal_stopped() {
    let Some(inside) = counting_server_at("127.0.0.2:0", "inside") else {
        eprintln!("127.0.0.2 cannot be bound here; skipping");
        return;
    };
    let outside = counting_server("image");
    block_on(async {
        let fetcher = Fetcher::new(DownloadConfig { allowed_cidrs: vec!["127.0.0.1".into()], ..config() }).unwrap();

        let target = inside.server.url("image");
        let error = fetch(&fetcher, &outside.server.url(&format!("redirect?to={target}"))).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Blocked, "{error:?}");
        assert!(error.message.contains("127.0.0.2"), "{}", error.message);
        assert_eq!(outside.requests(), 1);
        assert_eq!(inside.requests(), 0);
    });
}

#[test]
fn redirect_to_rejected_name_stopped() {
    let Some(inside) = counting_server_at("127.0.0.2:0", "inside") else {
        eprintln!("127.0.0.2 cannot be bound here; skipping");
        return;
    };
    let outside = counting_server("image");
    block_on(async {
        let names = resolver(&[("cdn.test", &["127.0.0.1"]), ("inside.test", &["127.0.0.2"])]);
        let fetcher = Fetcher::with_resolver(DownloadConfig { allowed_cidrs: vec!["127.0.0.1".into()], ..config() }, names).unwrap();

        let target = format!("http://inside.test:{}/image", inside.port());
        let error = fetch(&fetcher, &format!("http://cdn.test:{}/redirect?to={target}", outside.port())).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Blocked, "{error:?}");
        assert!(error.message.contains("inside.test resolved to 127.0.0.2"), "{}", error.message);
        assert_eq!(outside.requests(), 1);
        assert_eq!(inside.requests(), 0);
    });
}

#[test]
fn resolver_keeps_only_allowed_addresses() {
    let Some(allowed) = counting_server_at("127.0.0.2:0", "allowed") else {
        eprintln!("127.0.0.2 cannot be bound here; skipping");
        return;
    };
    let port = allowed.port();
    // A decoy on the rejected address and the same port; reaching it would mean the rejected
    // address was used.
    let decoy = counting_server_at(&format!("127.0.0.1:{port}"), "decoy");
    block_on(async {
        let names = resolver(&[("mixed.test", &["127.0.0.1", "127.0.0.2"])]);
        let fetcher = Fetcher::with_resolver(DownloadConfig { allowed_cidrs: vec!["127.0.0.2/32".into()], ..config() }, names).unwrap();

        let bytes = fetch(&fetcher, &format!("http://mixed.test:{port}/image")).await.unwrap();

        assert_eq!(bytes, b"allowed");
        assert_eq!(allowed.requests(), 1);
        if let Some(decoy) = &decoy {
            assert_eq!(decoy.requests(), 0);
        }
    });
}

/// Runs `capfilt run` with `extra` flags over a URL list of `paths` on a loopback server.
fn run_on_loopback(paths: &[&str], extra: &[&str]) -> (Vec<String>, std::process::Output, tempfile::TempDir, CountingServer) {
    let server = counting_server("not an image");
    let dir = tempfile::tempdir().unwrap();
    let urls: Vec<String> = paths.iter().map(|path| server.server.url(path)).collect();
    let list = dir.path().join("urls.txt");
    std::fs::write(&list, urls.join("\n")).unwrap();

    let out = dir.path().join("out");
    let model = tiny_captioner();
    let mut args = vec![
        "run", list.to_str().unwrap(), "--output", out.to_str().unwrap(), "--model", model.to_str().unwrap(),
        "--decoding", "greedy", "--timeout", "3", "--retries", "0",
    ];
    args.extend_from_slice(extra);
    let output = run_capfilt(&args, &[], Duration::from_secs(300));
    (urls, output, dir, server)
}

fn status_of<'a>(rows: &'a [std::collections::HashMap<String, Option<String>>], url: &str) -> Option<&'a str> {
    let row = rows.iter().find(|row| row["url"].as_deref() == Some(url)).unwrap_or_else(|| panic!("no row for {url}"));
    row["status"].as_deref()
}

#[test]
fn run_rejects_loopback_by_default() {
    let (urls, output, dir, server) = run_on_loopback(&["image"], &[]);

    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    let rows = read_shards(&dir.path().join("out"));
    assert_eq!(rows.len(), 1);
    assert_eq!(status_of(&rows, &urls[0]), Some("blocked_address"), "{rows:?}");
    assert!(rows[0]["error"].as_deref().is_some_and(|e| e.contains("loopback")), "{rows:?}");
    assert_eq!(server.requests(), 0);
}

#[test]
fn run_allow_cidr_reaches_loopback() {
    let (urls, output, dir, server) = run_on_loopback(&["image", "opted-out"], &["--allow-cidr", "127.0.0.1/32"]);

    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    let rows = read_shards(&dir.path().join("out"));
    assert_eq!(status_of(&rows, &urls[0]), Some("not_an_image"), "{rows:?}");
    assert_eq!(status_of(&rows, &urls[1]), Some("opted_out"), "{rows:?}");
    assert_eq!(server.requests(), 2);
}

#[test]
fn run_ignore_opt_out_downloads() {
    let (urls, output, dir, _server) = run_on_loopback(&["opted-out"], &["--allow-private-networks", "--ignore-opt-out"]);

    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    let rows = read_shards(&dir.path().join("out"));
    assert_eq!(status_of(&rows, &urls[0]), Some("not_an_image"), "the body was downloaded and decoded: {rows:?}");
}

#[test]
fn run_invalid_cidr_fails_at_startup() {
    let (_, output, _dir, server) = run_on_loopback(&["image"], &["--allow-cidr", "10.0.0.0/33"]);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid allowed CIDR \"10.0.0.0/33\""), "{stderr}");
    assert!(stderr.contains("--allow-cidr"), "{stderr}");
    assert_eq!(server.requests(), 0);
}
