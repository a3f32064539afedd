//! The downloader against hostile and broken HTTP servers on loopback: trickled and endless
//! bodies, redirect loops, lying `Content-Length`, gzip, rate limiting, per-host limits, DNS
//! failures and `X-Robots-Tag` opt-outs. Each case checks the row status and a time bound.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use capfilt::fetch::{locate, DownloadConfig, FetchError, Fetcher};
use capfilt::net_guard::DnsError;
use capfilt::status::RowStatus;
use common::*;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Requests seen by a server, by path, and the most handled at once.
#[derive(Default)]
struct Counters {
    requests: Mutex<HashMap<String, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Counters {
    fn record(&self, path: &str) {
        *self.requests.lock().unwrap().entry(path.to_string()).or_default() += 1;
    }

    fn requests(&self, path: &str) -> usize {
        self.requests.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

type Shared = Arc<Counters>;

/// Runs `test` on a runtime of its own that is shut down before the caller's servers are
/// dropped. The runtime drives the client's connections, and a server's graceful shutdown waits
/// for them to close, so dropping a server inside the runtime would hang.
fn block_on<F: std::future::Future>(test: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let output = runtime.block_on(test);
    runtime.shutdown_timeout(Duration::from_secs(1));
    output
}

/// Loopback servers are private addresses, so these tests open them; `net_guard.rs` tests the
/// guard itself. Small deadlines keep every failing case short.
fn config() -> DownloadConfig {
    DownloadConfig {
        allow_private_networks: true,
        timeout_secs: 2.0,
        connect_timeout_secs: 2.0,
        retries: 0,
        backoff_secs: 0.01,
        ..Default::default()
    }
}

async fn fetch_with(fetcher: &Fetcher, url: &str) -> Result<Vec<u8>, FetchError> {
    fetcher.fetch(&locate(url, None).unwrap()).await
}

async fn fetch(config: DownloadConfig, url: &str) -> Result<Vec<u8>, FetchError> {
    fetch_with(&Fetcher::new(config).unwrap(), url).await
}

/// Builds a body of `count` chunks, one every `interval`, so no test server streams forever.
fn chunked(chunk: Vec<u8>, interval: Duration, count: usize) -> Body {
    let stream = futures::stream::unfold(0usize, move |sent| {
        let chunk = chunk.clone();
        async move {
            if sent == count {
                return None;
            }
            tokio::time::sleep(interval).await;
            Some((Ok::<_, std::io::Error>(chunk), sent + 1))
        }
    });
    Body::from_stream(stream)
}

fn png() -> Vec<u8> {
    std::fs::read(fixtures().join("photos/chelsea.png")).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn hostile_server(counters: Shared) -> TestServer {
    let router = Router::new()
        .route("/trickle", get(trickle))
        .route("/loop/{name}", get(redirect_loop))
        .route("/hop/{n}", get(endless_hops))
        .route("/to-trickle", get(|State(c): State<Shared>| async move { count(&c, "/to-trickle", Redirect::to("/trickle")) }))
        .route("/huge", get(huge_declared))
        .route("/endless", get(endless_fast))
        .route("/short", get(short_body))
        .route("/empty", get(|State(c): State<Shared>| async move { count(&c, "/empty", StatusCode::OK) }))
        .route("/gzip", get(gzip_png))
        .route("/gzip-bomb", get(gzip_bomb))
        .route("/limited/{code}/{seconds}", get(limited_once))
        .route("/always/{code}/{seconds}", get(always_limited))
        .route("/status/{code}", get(plain_status))
        .route("/slow-ok", get(slow_ok))
        .route("/robots/{value}", get(robots_tagged))
        .route("/robots-repeated", get(robots_repeated))
        .with_state(counters);
    TestServer::start(router)
}

fn count(counters: &Counters, path: &str, response: impl IntoResponse) -> Response {
    counters.record(path);
    response.into_response()
}

/// Headers at once, then one byte a second for up to two minutes.
async fn trickle(State(counters): State<Shared>) -> Response {
    counters.record("/trickle");
    let headers = [("content-type", "image/jpeg")];
    (headers, chunked(vec![0xff], Duration::from_secs(1), 120)).into_response()
}

async fn redirect_loop(State(counters): State<Shared>, UrlPath(name): UrlPath<String>) -> Response {
    counters.record("/loop");
    let next = if name == "a" { "/loop/b" } else { "/loop/a" };
    Redirect::to(next).into_response()
}

async fn endless_hops(State(counters): State<Shared>, UrlPath(n): UrlPath<u32>) -> Response {
    counters.record("/hop");
    Redirect::to(&format!("/hop/{}", n + 1)).into_response()
}

/// Declares 5 GB, then sends a byte a second: reading the body would run into the deadline.
async fn huge_declared(State(counters): State<Shared>) -> Response {
    counters.record("/huge");
    let headers = [("content-length", "5000000000"), ("content-type", "image/jpeg")];
    (headers, chunked(vec![0], Duration::from_secs(1), 60)).into_response()
}

/// Streams 64 KiB chunks as fast as the client reads, up to 64 MiB.
async fn endless_fast(State(counters): State<Shared>) -> Response {
    counters.record("/endless");
    chunked(vec![7; 64 * 1024], Duration::ZERO, 1024).into_response()
}

/// Declares 1000 bytes and sends 10.
async fn short_body(State(counters): State<Shared>) -> Response {
    counters.record("/short");
    let headers = [("content-length", "1000"), ("content-type", "image/png")];
    (headers, chunked(vec![1; 10], Duration::ZERO, 1)).into_response()
}

async fn gzip_png(State(counters): State<Shared>, headers: HeaderMap) -> Response {
    counters.record("/gzip");
    let accepts_gzip = headers.get("accept-encoding").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("gzip"));
    if !accepts_gzip {
        return StatusCode::NOT_ACCEPTABLE.into_response();
    }
    ([("content-encoding", "gzip"), ("content-type", "image/png")], gzip(&png())).into_response()
}

/// 16 MiB of zeros, a few KiB once compressed.
async fn gzip_bomb(State(counters): State<Shared>) -> Response {
    counters.record("/gzip-bomb");
    ([("content-encoding", "gzip")], gzip(&vec![0u8; 16 * 1024 * 1024])).into_response()
}

/// Responds `code` with `Retry-After: seconds` to the first request, then serves the PNG.
async fn limited_once(State(counters): State<Shared>, UrlPath((code, seconds)): UrlPath<(u16, u64)>) -> Response {
    let path = format!("/limited/{code}/{seconds}");
    counters.record(&path);
    if counters.requests(&path) > 1 {
        return png().into_response();
    }
    let status = StatusCode::from_u16(code).unwrap();
    (status, [("retry-after", seconds.to_string())]).into_response()
}

async fn always_limited(State(counters): State<Shared>, UrlPath((code, seconds)): UrlPath<(u16, u64)>) -> Response {
    counters.record(&format!("/always/{code}/{seconds}"));
    (StatusCode::from_u16(code).unwrap(), [("retry-after", seconds.to_string())]).into_response()
}

async fn plain_status(State(counters): State<Shared>, UrlPath(code): UrlPath<u16>) -> Response {
    counters.record(&format!("/status/{code}"));
    StatusCode::from_u16(code).unwrap().into_response()
}

/// Holds each request for 150 ms while tracking how many are handled at once.
async fn slow_ok(State(counters): State<Shared>) -> Response {
    counters.record("/slow-ok");
    let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(150)).await;
    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
    "ok".into_response()
}

/// Sends `X-Robots-Tag: value` and a body that takes a minute, so reading it would time out.
async fn robots_tagged(State(counters): State<Shared>, UrlPath(value): UrlPath<String>) -> Response {
    counters.record("/robots");
    let headers = [("x-robots-tag", value)];
    (headers, chunked(vec![1], Duration::from_secs(1), 60)).into_response()
}

async fn robots_repeated(State(counters): State<Shared>) -> Response {
    counters.record("/robots-repeated");
    let mut response = png().into_response();
    response.headers_mut().append("x-robots-tag", "noindex".parse().unwrap());
    response.headers_mut().append("x-robots-tag", "otherbot: noai".parse().unwrap());
    response.headers_mut().append("x-robots-tag", "NoImageAI".parse().unwrap());
    response
}

fn start() -> (TestServer, Shared) {
    let counters = Shared::default();
    (hostile_server(counters.clone()), counters)
}

#[test]
fn trickled_body_hits_total_deadline() {
    let (server, _) = start();
    block_on(async {
        let started = Instant::now();

        let error = fetch(DownloadConfig { timeout_secs: 1.5, ..config() }, &server.url("trickle")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Timeout, "{error:?}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1400), "ended before the deadline: {elapsed:?}");
        assert!(elapsed < Duration::from_secs(4), "ran past the deadline: {elapsed:?}");
    });
}

#[test]
fn redirect_loop_stops_at_repeat() {
    let (server, counters) = start();
    block_on(async {
        let error = fetch(DownloadConfig { retries: 3, ..config() }, &server.url("loop/a")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::TooManyRedirects, "{error:?}");
        assert!(error.message.contains("redirect loop"), "{}", error.message);
        assert!(!error.transient);
        assert_eq!(counters.requests("/loop"), 2, "a and b are requested once each, with no retry");
    });
}

#[test]
fn redirect_chain_stops_at_limit() {
    let (server, counters) = start();
    block_on(async {
        let error = fetch(DownloadConfig { max_redirects: 3, retries: 2, ..config() }, &server.url("hop/0")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::TooManyRedirects, "{error:?}");
        assert!(error.message.contains("more than 3 redirects"), "{}", error.message);
        assert_eq!(counters.requests("/hop"), 4, "the first request and three redirects");
    });
}

#[test]
fn redirect_to_stalled_body_times_out() {
    let (server, counters) = start();
    block_on(async {
        let started = Instant::now();

        let error = fetch(DownloadConfig { timeout_secs: 1.0, ..config() }, &server.url("to-trickle")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Timeout, "{error:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(counters.requests("/trickle"), 1, "the redirect was followed");
    });
}

#[test]
fn huge_content_length_rejected_from_headers() {
    let (server, _) = start();
    block_on(async {
        let started = Instant::now();

        let error = fetch(DownloadConfig { timeout_secs: 3.0, ..config() }, &server.url("huge")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::TooLarge, "{error:?}");
        assert!(error.message.contains("Content-Length 5000000000"), "{}", error.message);
        assert!(started.elapsed() < Duration::from_secs(1), "the body was read: {:?}", started.elapsed());
    });
}

#[test]
fn endless_chunked_body_hits_byte_cap() {
    let (server, _) = start();
    block_on(async {
        let started = Instant::now();

        let config = DownloadConfig { max_bytes: 1024 * 1024, timeout_secs: 10.0, ..config() };
        let error = fetch(config, &server.url("endless")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::TooLarge, "{error:?}");
        assert!(error.message.contains("1048576 byte limit"), "{}", error.message);
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    });
}

#[test]
fn body_shorter_than_declared_is_error() {
    let (server, counters) = start();
    block_on(async {
        let error = fetch(DownloadConfig { retries: 1, ..config() }, &server.url("short")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::NetworkError, "{error:?}");
        assert!(error.transient, "a cut connection may succeed on retry");
        assert_eq!(counters.requests("/short"), 2, "retried once");
    });
}

#[test]
fn empty_ok_response_returns_no_bytes() {
    let (server, _) = start();
    block_on(async {
        let bytes = fetch(config(), &server.url("empty")).await.unwrap();

        assert!(bytes.is_empty(), "{} bytes", bytes.len());
    });
}

#[test]
fn gzip_body_decoded() {
    let (server, _) = start();
    block_on(async {
        let bytes = fetch(config(), &server.url("gzip")).await.unwrap();

        assert_eq!(bytes, png(), "the decoded body equals the original PNG");
    });
}

#[test]
fn gzip_bomb_hits_byte_cap() {
    let (server, _) = start();
    block_on(async {
        let error = fetch(DownloadConfig { max_bytes: 1024 * 1024, ..config() }, &server.url("gzip-bomb")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::TooLarge, "{error:?}");
    });
}

fn assert_retry_after_waited(code: u16) {
    let (server, counters) = start();
    block_on(async {
        let started = Instant::now();

        let config = DownloadConfig { retries: 2, backoff_secs: 0.01, ..config() };
        let bytes = fetch(config, &server.url(&format!("limited/{code}/1"))).await.unwrap();

        assert_eq!(bytes, png());
        assert_eq!(counters.requests(&format!("/limited/{code}/1")), 2);
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(950), "HTTP {code}: retried after {elapsed:?}, before Retry-After");
        assert!(elapsed < Duration::from_secs(3), "HTTP {code}: {elapsed:?}");
    });
}

#[test]
fn retry_after_honoured_on_429() {
    assert_retry_after_waited(429);
}

#[test]
fn retry_after_honoured_on_503() {
    assert_retry_after_waited(503);
}

#[test]
fn persistent_rate_limit_gets_own_status() {
    let (server, counters) = start();
    block_on(async {
        let error = fetch(DownloadConfig { retries: 2, ..config() }, &server.url("always/429/0")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::RateLimited, "{error:?}");
        assert_eq!(counters.requests("/always/429/0"), 3, "the first attempt and two retries");
    });
}

#[test]
fn long_retry_after_not_waited() {
    let (server, counters) = start();
    block_on(async {
        let started = Instant::now();

        let config = DownloadConfig { retries: 2, max_retry_after_secs: 5.0, ..config() };
        let error = fetch(config, &server.url("always/503/3600")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::RateLimited, "{error:?}");
        assert!(error.message.contains("Retry-After 3600 s"), "{}", error.message);
        assert_eq!(counters.requests("/always/503/3600"), 1);
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    });
}

#[test]
fn permanent_statuses_not_retried() {
    let (server, counters) = start();
    block_on(async {
        let fetcher = Fetcher::new(DownloadConfig { retries: 3, ..config() }).unwrap();

        for code in [404, 403, 410] {
            let error = fetch_with(&fetcher, &server.url(&format!("status/{code}"))).await.unwrap_err();
            assert_eq!(error.status, RowStatus::HttpError, "{code}: {error:?}");
            assert_eq!(error.message, format!("HTTP {code}"));
            assert_eq!(counters.requests(&format!("/status/{code}")), 1, "HTTP {code} was retried");
        }
    });
}

#[test]
fn server_errors_retried() {
    let (server, counters) = start();
    block_on(async {
        let error = fetch(DownloadConfig { retries: 2, ..config() }, &server.url("status/500")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::HttpError, "{error:?}");
        assert_eq!(counters.requests("/status/500"), 3);
    });
}

/// Runs `count` downloads of `/slow-ok` at once, one per URL in turn.
async fn run_concurrently(fetcher: &Fetcher, urls: &[String], count: usize) {
    let downloads = (0..count).map(|i| fetch_with(fetcher, &urls[i % urls.len()]));
    let results = futures::future::join_all(downloads).await;
    for result in results {
        assert_eq!(result.unwrap(), b"ok");
    }
}

#[test]
fn per_host_concurrency_capped() {
    let (server, counters) = start();
    block_on(async {
        let fetcher = Fetcher::new(DownloadConfig { per_host_concurrency: 3, ..config() }).unwrap();

        run_concurrently(&fetcher, &[server.url("slow-ok")], 12).await;

        let max = counters.max_in_flight.load(Ordering::SeqCst);
        assert!(max <= 3, "{max} requests to one host at once");
        assert!(max >= 2, "downloads ran one at a time: {max}");
        assert_eq!(counters.requests("/slow-ok"), 12);
    });
}

#[test]
fn per_host_limit_is_per_host() {
    let (server, counters) = start();
    block_on(async {
        let resolver = MapResolver::new(&[("a.test", Answer::Loopback), ("b.test", Answer::Loopback)]);
        let config = DownloadConfig { per_host_concurrency: 2, ..config() };
        let fetcher = Fetcher::with_resolver(config, resolver).unwrap();
        let port = server.addr.port();
        let urls = [format!("http://a.test:{port}/slow-ok"), format!("http://b.test:{port}/slow-ok")];

        run_concurrently(&fetcher, &urls, 12).await;

        let max = counters.max_in_flight.load(Ordering::SeqCst);
        assert!(max <= 4, "{max} requests at once over two hosts limited to 2 each");
        assert!(max >= 3, "the hosts shared one limit: {max}");
    });
}

/// What the test resolver returns for a name.
#[derive(Clone, Copy)]
enum Answer {
    Loopback,
    TemporaryFailure,
    NotFound,
}

/// Maps invented names to fixed results without any network lookup, and counts lookups per name.
/// Names it does not know are not found.
struct MapResolver {
    answers: HashMap<String, Answer>,
    lookups: Mutex<HashMap<String, usize>>,
}

impl MapResolver {
    fn new(answers: &[(&str, Answer)]) -> Arc<Self> {
        let answers = answers.iter().map(|(name, answer)| (name.to_string(), *answer)).collect();
        Arc::new(Self { answers, lookups: Mutex::default() })
    }

    fn lookups(&self, name: &str) -> usize {
        self.lookups.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Resolve for MapResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_string();
        *self.lookups.lock().unwrap().entry(name.clone()).or_default() += 1;

        let answer = self.answers.get(&name).copied().unwrap_or(Answer::NotFound);
        Box::pin(async move {
            match answer {
                Answer::Loopback => {
                    let addrs: Vec<SocketAddr> = vec![([127, 0, 0, 1], 0).into()];
                    Ok(Box::new(addrs.into_iter()) as Addrs)
                }
                Answer::TemporaryFailure => {
                    Err(DnsError::Temporary { name, message: "test resolver: server failure".into() }.into())
                }
                Answer::NotFound => Err(DnsError::NotFound { name, message: "test resolver: no such name".into() }.into()),
            }
        })
    }
}

#[test]
fn injected_resolver_serves_invented_name() {
    let (server, counters) = start();
    block_on(async {
        let resolver = MapResolver::new(&[("img.test", Answer::Loopback)]);
        let fetcher = Fetcher::with_resolver(config(), resolver.clone()).unwrap();

        let bytes = fetch_with(&fetcher, &format!("http://img.test:{}/gzip", server.addr.port())).await.unwrap();

        assert_eq!(bytes, png());
        assert_eq!(resolver.lookups("img.test"), 1);
        assert_eq!(counters.requests("/gzip"), 1);
    });
}

#[test]
fn temporary_dns_failure_retried() {
    block_on(async {
        let resolver = MapResolver::new(&[("temp-fail.test", Answer::TemporaryFailure)]);
        let fetcher = Fetcher::with_resolver(DownloadConfig { retries: 2, ..config() }, resolver.clone()).unwrap();

        let error = fetch_with(&fetcher, "http://temp-fail.test/a.jpg").await.unwrap_err();

        assert_eq!(error.status, RowStatus::NetworkError, "{error:?}");
        assert!(error.transient);
        assert!(error.message.contains("temporary DNS failure for temp-fail.test"), "{}", error.message);
        assert_eq!(resolver.lookups("temp-fail.test"), 3, "the first lookup and two retries");
    });
}

#[test]
fn missing_name_not_retried() {
    block_on(async {
        let resolver = MapResolver::new(&[("gone.test", Answer::NotFound)]);
        let fetcher = Fetcher::with_resolver(DownloadConfig { retries: 2, ..config() }, resolver.clone()).unwrap();

        let error = fetch_with(&fetcher, "http://gone.test/a.jpg").await.unwrap_err();

        assert_eq!(error.status, RowStatus::NetworkError, "{error:?}");
        assert!(!error.transient);
        assert!(error.message.contains("gone.test not found in DNS"), "{}", error.message);
        assert_eq!(resolver.lookups("gone.test"), 1);
    });
}

#[test]
fn robots_noai_dropped_from_headers() {
    let (server, _) = start();
    block_on(async {
        let started = Instant::now();

        let error = fetch(DownloadConfig { timeout_secs: 5.0, ..config() }, &server.url("robots/noindex,%20NoAI")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::OptedOut, "{error:?}");
        assert!(error.message.contains("noai"), "{}", error.message);
        assert!(!error.transient);
        assert!(started.elapsed() < Duration::from_secs(1), "the body was read: {:?}", started.elapsed());
    });
}

#[test]
fn robots_scoped_to_other_agent_ignored() {
    let (server, _) = start();
    block_on(async {
        // The body takes a minute, so the deadline ends the download once the headers pass.
        let error = fetch(DownloadConfig { timeout_secs: 1.0, ..config() }, &server.url("robots/otherbot:%20noai")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::Timeout, "{error:?}");
    });
}

#[test]
fn robots_scoped_to_capfilt_applies() {
    let (server, _) = start();
    block_on(async {
        let error = fetch(config(), &server.url("robots/otherbot:%20noindex,%20capfilt:%20noimageai")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::OptedOut, "{error:?}");
    });
}

#[test]
fn repeated_robots_headers_opt_out() {
    let (server, _) = start();
    block_on(async {
        let error = fetch(config(), &server.url("robots-repeated")).await.unwrap_err();

        assert_eq!(error.status, RowStatus::OptedOut, "{error:?}");
        assert!(error.message.contains("noimageai"), "{}", error.message);
    });
}

#[test]
fn opt_out_can_be_disabled() {
    let (server, _) = start();
    block_on(async {
        let bytes = fetch(DownloadConfig { respect_opt_out: false, ..config() }, &server.url("robots-repeated")).await.unwrap();

        assert_eq!(bytes, png());
    });
}
