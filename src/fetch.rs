//! Image downloads over HTTP(S) and from local files.
//!
//! HTTP downloads use pooled connections, deadlines, a byte cap enforced while streaming,
//! bounded redirects, retries with backoff for transient failures and a per-host concurrency
//! limit. They pass the SSRF guard of `net_guard`, and `X-Robots-Tag` AI opt-outs are honoured.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use reqwest::dns::Resolve;
use reqwest::header::{HeaderMap, HeaderName, CONTENT_LENGTH, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::s3::{LazyClient, S3Url};
use crate::net_guard::{BlockedAddress, DnsError, GuardedResolver, InvalidCidr, NetGuard, SystemResolver};
use crate::redact::{redact_url, redact_urls};
use crate::status::RowStatus;

/// Download limits and behaviour. Defaults suit web-scale crawls on servers, not a laptop:
/// 64 concurrent downloads per process, 20 MB per image, 30 s per image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DownloadConfig {
    /// Downloads in flight at once.
    pub concurrency: usize,
    /// Seconds to establish a connection.
    pub connect_timeout_secs: f64,
    /// Seconds for a whole attempt: connection, headers and body.
    pub timeout_secs: f64,
    /// Largest body accepted, in bytes; larger ones end as `too_large`.
    pub max_bytes: u64,
    pub max_redirects: usize,
    /// Extra attempts after a transient failure (timeouts, connection errors, 429, 5xx).
    pub retries: u32,
    /// First backoff in seconds, doubled at each retry.
    pub backoff_secs: f64,
    /// Longest `Retry-After` honoured, in seconds; longer waits end the row as failed.
    pub max_retry_after_secs: f64,
    pub user_agent: String,
    /// Downloads in flight at once to one host (the host and port of the row's URL); 0 for no
    /// limit. Redirects to other hosts count against the first host.
    pub per_host_concurrency: usize,
    /// Lets downloads reach loopback, private, link-local and other non-public addresses.
    /// Cloud metadata addresses stay rejected unless `allowed_cidrs` contains them.
    pub allow_private_networks: bool,
    /// CIDR blocks, or single addresses, that downloads may reach although the SSRF guard
    /// rejects them by default.
    pub allowed_cidrs: Vec<String>,
    /// Drops images whose `X-Robots-Tag` contains `noai` or `noimageai` for every crawler or
    /// for capfilt's user agent.
    pub respect_opt_out: bool,
    /// Lets rows name local files (plain paths and `file://` URLs). Turn it off for lists from
    /// untrusted sources, whose rows could otherwise read files on the worker.
    pub allow_local_files: bool,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            connect_timeout_secs: 10.0,
            timeout_secs: 30.0,
            max_bytes: 20 * 1024 * 1024,
            max_redirects: 5,
            retries: 2,
            backoff_secs: 0.5,
            max_retry_after_secs: 30.0,
            user_agent: format!("capfilt/{} (image captioning)", env!("CARGO_PKG_VERSION")),
            per_host_concurrency: 8,
            allow_private_networks: false,
            allowed_cidrs: Vec::new(),
            respect_opt_out: true,
            allow_local_files: true,
        }
    }
}

impl DownloadConfig {
    /// Rejects settings the downloader cannot start with: today, invalid `allowed_cidrs`.
    pub fn validate(&self) -> Result<(), InvalidCidr> {
        NetGuard::new(self.allow_private_networks, &self.allowed_cidrs).map(|_| ())
    }
}

/// A failed download with its row status and a message naming the cause.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchError {
    pub status: RowStatus,
    pub message: String,
    /// Whether another attempt may succeed.
    pub transient: bool,
    /// The server's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl FetchError {
    pub(crate) fn permanent(status: RowStatus, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), transient: false, retry_after: None }
    }

    pub(crate) fn transient(status: RowStatus, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), transient: true, retry_after: None }
    }

    fn blocked(blocked: BlockedAddress) -> Self {
        Self::permanent(RowStatus::Blocked, blocked.to_string())
    }
}

/// The reason the redirect policy stopped following redirects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectError {
    #[error("redirect loop: {url} was already requested")]
    Loop { url: String },
    #[error("more than {max} redirects")]
    TooMany { max: usize },
}

/// Where an image's bytes come from.
#[derive(Clone, PartialEq)]
pub enum ImageLocation {
    Http(reqwest::Url),
    File(PathBuf),
    S3 { bucket: String, key: String },
}

/// Shows HTTP URLs without their user information, which may hold a password.
impl std::fmt::Debug for ImageLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageLocation::Http(url) => f.debug_tuple("Http").field(&redact_url(url)).finish(),
            ImageLocation::File(path) => f.debug_tuple("File").field(path).finish(),
            ImageLocation::S3 { bucket, key } => f.debug_struct("S3").field("bucket", bucket).field("key", key).finish(),
        }
    }
}

/// Resolves a row's URL. Paths without a scheme are relative to `base_dir`, the folder of the
/// URL list they came from.
pub fn locate(url: &str, base_dir: Option<&Path>) -> Result<ImageLocation, FetchError> {
    let url = url.trim();
    let lower = url.to_ascii_lowercase();

    if lower.starts_with("http://") || lower.starts_with("https://") {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::permanent(RowStatus::InvalidUrl, format!("invalid URL: {e}")))?;
        return Ok(ImageLocation::Http(parsed));
    }
    if lower.starts_with("file://") {
        let parsed = reqwest::Url::parse(url).map_err(|e| FetchError::permanent(RowStatus::InvalidUrl, format!("invalid file URL: {e}")))?;
        let path = parsed.to_file_path().map_err(|_| FetchError::permanent(RowStatus::InvalidUrl, "file URL has no local path"))?;
        return Ok(ImageLocation::File(path));
    }
    if let Some(rest) = lower.strip_prefix("s3://") {
        let rest = &url[url.len() - rest.len()..];
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || key.is_empty() {
            return Err(FetchError::permanent(RowStatus::InvalidUrl, "s3 URL needs a bucket and a key"));
        }
        return Ok(ImageLocation::S3 { bucket: bucket.to_string(), key: key.to_string() });
    }

    let path = Path::new(url);
    let path = match base_dir {
        Some(base) if path.is_relative() => base.join(path),
        _ => path.to_path_buf(),
    };
    Ok(ImageLocation::File(path))
}

/// Downloads image bytes. Cheap to clone; clones share the connection pool and the per-host
/// limits.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    config: DownloadConfig,
    guard: Arc<NetGuard>,
    hosts: HostLimiter,
    /// User-agent tokens whose scoped `X-Robots-Tag` directives apply to capfilt.
    opt_out_agents: Arc<Vec<String>>,
    s3: LazyClient,
}

impl Fetcher {
    pub fn new(config: DownloadConfig) -> anyhow::Result<Self> {
        Self::with_resolver(config, Arc::new(SystemResolver))
    }

    /// Builds a fetcher whose DNS lookups go to `resolver`. The SSRF guard still filters what it
    /// returns, so tests can map invented names to loopback and see the guard act on them.
    pub fn with_resolver(config: DownloadConfig, resolver: Arc<dyn Resolve>) -> anyhow::Result<Self> {
        let guard = NetGuard::new(config.allow_private_networks, &config.allowed_cidrs)
            .context("invalid download.allowed_cidrs (--allow-cidr)")?;
        let guard = Arc::new(guard);
        log_download_policy(&config);

        let client = build_client(&config, resolver, guard.clone())?;
        let hosts = HostLimiter::new(config.per_host_concurrency);
        let opt_out_agents = Arc::new(opt_out_agents(&config.user_agent));
        Ok(Self { client, config, guard, hosts, opt_out_agents, s3: LazyClient::default() })
    }

    /// The HTTP client, for other downloads that share its pool and settings. Its resolver and
    /// redirect policy apply the SSRF guard, but a request URL whose host is an IP literal skips
    /// DNS: call `check_url` before sending one.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn config(&self) -> &DownloadConfig {
        &self.config
    }

    /// Returns the S3 client for `s3://` images and lists, created on first use.
    pub fn s3(&self) -> &LazyClient {
        &self.s3
    }

    /// Checks a URL whose host is an IP literal against the SSRF guard. Host names pass here and
    /// are checked after resolution.
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        self.guard.check_url(url).map_err(FetchError::blocked)
    }

    /// Fetches the bytes at `location`, retrying transient failures with exponential backoff.
    pub async fn fetch(&self, location: &ImageLocation) -> Result<Vec<u8>, FetchError> {
        match location {
            ImageLocation::Http(url) => self.fetch_http_with_retries(url).await,
            ImageLocation::File(path) if !self.config.allow_local_files => Err(FetchError::permanent(
                RowStatus::Blocked,
                format!("{} is a local file, and reading local files is turned off (--no-local-files)", path.display()),
            )),
            ImageLocation::File(path) => read_file(path, self.config.max_bytes).await,
            ImageLocation::S3 { bucket, key } => {
                let url = S3Url { bucket: bucket.clone(), key: key.clone() };
                self.fetch_s3_with_retries(&url).await
            }
        }
    }

    /// Reads an S3 object. The endpoint is operator configuration rather than row data, so the
    /// address guard does not apply to it.
    async fn fetch_s3_with_retries(&self, url: &S3Url) -> Result<Vec<u8>, FetchError> {
        let client = self.s3.get().await;
        let deadline = Duration::from_secs_f64(self.config.timeout_secs);

        self.with_retries(&url.to_string(), || async {
            tokio::time::timeout(deadline, crate::s3::get_capped(client, url, self.config.max_bytes))
                .await
                .unwrap_or_else(|_| {
                    let message = format!("{url}: read did not finish within {:.1} s", deadline.as_secs_f64());
                    Err(FetchError::transient(RowStatus::Timeout, message))
                })
        })
        .await
    }

    async fn fetch_http_with_retries(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        self.check_url(url)?;
        self.with_retries(&redact_url(url), || self.fetch_http_once(url)).await
    }

    /// Runs `attempt` until it succeeds or fails for good, sleeping between attempts as
    /// long as `retry_wait` returns. `label` names the resource in logs and must carry no secret.
    async fn with_retries<F, Fut>(&self, label: &str, mut attempt: F) -> Result<Vec<u8>, FetchError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, FetchError>>,
    {
        let mut attempts = 0;
        loop {
            let error = match attempt().await {
                Ok(bytes) => return Ok(bytes),
                Err(error) => error,
            };
            let Some(wait) = self.retry_wait(&error, attempts) else {
                return Err(error);
            };

            tracing::debug!(url = %label, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %error.message, "retrying download");
            tokio::time::sleep(wait).await;
            attempts += 1;
        }
    }

    /// Returns the wait before another attempt, or `None` when the error is final: permanent,
    /// out of retries, or with a `Retry-After` longer than `max_retry_after_secs`.
    fn retry_wait(&self, error: &FetchError, attempt: u32) -> Option<Duration> {
        if !error.transient || attempt >= self.config.retries {
            return None;
        }

        let backoff = Duration::from_secs_f64(self.config.backoff_secs * 2f64.powi(attempt as i32));
        match error.retry_after {
            Some(wait) if wait.as_secs_f64() > self.config.max_retry_after_secs => None,
            Some(wait) => Some(wait.max(backoff)),
            None => Some(backoff),
        }
    }

    async fn fetch_http_once(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        // The deadline starts after the per-host permit, so queueing behind other downloads
        // from the same host is not counted as a timeout.
        let _permit = self.hosts.acquire(url).await;

        let deadline = Duration::from_secs_f64(self.config.timeout_secs);
        match tokio::time::timeout(deadline, self.request(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::transient(
                RowStatus::Timeout,
                format!("download did not finish within {:.1} s", deadline.as_secs_f64()),
            )),
        }
    }

    async fn request(&self, url: &Url) -> Result<Vec<u8>, FetchError> {
        let response = self.client.get(url.clone()).send().await.map_err(classify_reqwest_error)?;

        self.check_peer(&response)?;
        let status = response.status();
        if !status.is_success() {
            return Err(http_status_error(status, response.headers()));
        }

        // Both checks use the headers alone, so a rejected body is never read.
        self.check_opt_out(&response)?;
        check_declared_length(response.headers(), self.config.max_bytes)?;

        read_capped_body(response, self.config.max_bytes).await
    }

    /// Rejects a response from an address the guard forbids. The resolver and the literal-host
    /// checks already close every known path to such an address, so this only catches a path
    /// they miss. The request has been sent by then, but its response stays out of the dataset.
    fn check_peer(&self, response: &reqwest::Response) -> Result<(), FetchError> {
        let Some(peer) = response.remote_addr() else {
            return Ok(());
        };
        self.guard.check_ip(peer.ip()).map_err(FetchError::blocked)
    }

    fn check_opt_out(&self, response: &reqwest::Response) -> Result<(), FetchError> {
        if !self.config.respect_opt_out {
            return Ok(());
        }

        let Some(directive) = ai_opt_out(response.headers(), &self.opt_out_agents) else {
            return Ok(());
        };
        tracing::debug!(url = %redact_url(response.url()), directive, "image opted out of AI use");
        Err(FetchError::permanent(RowStatus::OptedOut, format!("X-Robots-Tag opts out of AI use ({directive})")))
    }
}

fn build_client(config: &DownloadConfig, resolver: Arc<dyn Resolve>, guard: Arc<NetGuard>) -> reqwest::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(config.user_agent.clone())
        .connect_timeout(Duration::from_secs_f64(config.connect_timeout_secs))
        .redirect(redirect_policy(config.max_redirects, guard.clone()))
        .dns_resolver(Arc::new(GuardedResolver::new(resolver, guard.clone())))
        .pool_max_idle_per_host(16)
        .gzip(true);

    // A proxy resolves the destination itself, so the guard would only ever see the proxy's
    // address. With the guard on, the HTTP(S)_PROXY variables are therefore ignored.
    if !guard.allows_private_networks() {
        builder = builder.no_proxy();
    }
    builder.build()
}

fn log_download_policy(config: &DownloadConfig) {
    if config.allow_private_networks {
        tracing::warn!("downloads may reach loopback and private networks (cloud metadata stays rejected)");
    }
    if !config.allowed_cidrs.is_empty() {
        tracing::info!(allowed_cidrs = ?config.allowed_cidrs, "downloads may reach these otherwise rejected blocks");
    }
    if !config.respect_opt_out {
        tracing::warn!("X-Robots-Tag noai and noimageai opt-outs are ignored");
    }
}

/// Follows at most `max_redirects` redirects, stops a loop at the first repeated URL, and checks
/// IP-literal targets with the guard because those connect without DNS resolution.
fn redirect_policy(max_redirects: usize, guard: Arc<NetGuard>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        match check_redirect(attempt.url(), attempt.previous(), max_redirects, &guard) {
            Some(error) => attempt.error(error),
            None => attempt.follow(),
        }
    })
}

fn check_redirect(next: &Url, previous: &[Url], max_redirects: usize, guard: &NetGuard) -> Option<Box<dyn StdError + Send + Sync>> {
    if let Err(blocked) = guard.check_url(next) {
        return Some(Box::new(blocked));
    }
    if previous.contains(next) {
        return Some(Box::new(RedirectError::Loop { url: redact_url(next) }));
    }

    // `previous` starts with the requested URL, so it holds one entry more than the redirects
    // followed so far.
    if previous.len() > max_redirects {
        return Some(Box::new(RedirectError::TooMany { max: max_redirects }));
    }
    None
}

/// Limits downloads in flight per host. The table holds weak references, so a host's semaphore
/// lives only while downloads from it wait or run, and the table is pruned as it grows, which
/// keeps memory flat over millions of hosts.
#[derive(Clone)]
struct HostLimiter {
    max_per_host: usize,
    table: Arc<Mutex<HostTable>>,
}

#[derive(Default)]
struct HostTable {
    semaphores: HashMap<String, Weak<Semaphore>>,
    prune_at: usize,
}

/// Table size below which pruning is not worth a pass.
const HOST_TABLE_MIN_PRUNE: usize = 1024;

impl HostLimiter {
    fn new(max_per_host: usize) -> Self {
        let table = HostTable { semaphores: HashMap::new(), prune_at: HOST_TABLE_MIN_PRUNE };
        Self { max_per_host, table: Arc::new(Mutex::new(table)) }
    }

    /// Waits for a slot on the URL's host; `None` when there is no per-host limit.
    async fn acquire(&self, url: &Url) -> Option<OwnedSemaphorePermit> {
        if self.max_per_host == 0 {
            return None;
        }

        let semaphore = self.semaphore_for(host_key(url));
        // The semaphore is never closed, so acquiring fails only if that changes.
        semaphore.acquire_owned().await.ok()
    }

    fn semaphore_for(&self, key: String) -> Arc<Semaphore> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(semaphore) = table.semaphores.get(&key).and_then(Weak::upgrade) {
            return semaphore;
        }

        let semaphore = Arc::new(Semaphore::new(self.max_per_host));
        table.semaphores.insert(key, Arc::downgrade(&semaphore));
        table.prune();
        semaphore
    }
}

impl HostTable {
    /// Drops hosts with nothing in flight once the table has doubled since the last pass, so
    /// pruning costs amortised constant time per insert.
    fn prune(&mut self) {
        if self.semaphores.len() < self.prune_at {
            return;
        }

        self.semaphores.retain(|_, semaphore| semaphore.strong_count() > 0);
        self.prune_at = (self.semaphores.len() * 2).max(HOST_TABLE_MIN_PRUNE);
    }
}

fn host_key(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or_default();
    format!("{host}:{port}")
}

/// The `X-Robots-Tag` response header (robots directives for non-HTML resources).
const X_ROBOTS_TAG: HeaderName = HeaderName::from_static("x-robots-tag");

/// Directives that opt content out of AI training and generation. `noimageai` covers images
/// only, which is all capfilt downloads.
const AI_OPT_OUT_DIRECTIVES: [&str; 2] = ["noai", "noimageai"];

/// Robots directives written `name: value`, which must not be read as a user-agent scope.
const VALUED_DIRECTIVES: [&str; 4] = ["unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"];

/// The user-agent tokens that address capfilt in scoped directives: `capfilt`, and the product
/// token of the configured User-Agent (`mybot` for `MyBot/2.0 (+https://...)`).
fn opt_out_agents(user_agent: &str) -> Vec<String> {
    let mut agents = vec!["capfilt".to_string()];
    let product = user_agent.split(['/', ' ']).next().unwrap_or_default().trim().to_ascii_lowercase();
    if !product.is_empty() && !agents.contains(&product) {
        agents.push(product);
    }
    agents
}

/// Returns the AI opt-out directive in the `X-Robots-Tag` headers that applies to `agents`, if
/// any. Every header counts, so a repeated header can opt out on its own.
pub fn ai_opt_out(headers: &HeaderMap, agents: &[String]) -> Option<String> {
    headers
        .get_all(X_ROBOTS_TAG)
        .iter()
        .find_map(|value| robots_tag_opt_out(&String::from_utf8_lossy(value.as_bytes()), agents))
}

/// Returns the AI opt-out directive of one `X-Robots-Tag` value that applies to `agents`.
///
/// The value is a comma-separated list of directives, matched without regard to case. An item
/// `agent: directive` scopes that directive and the items after it, up to the next scope, to
/// `agent`. Directives before any scope apply to every crawler. A scope applies to capfilt
/// when it is `*` or one of `agents`.
pub fn robots_tag_opt_out(value: &str, agents: &[String]) -> Option<String> {
    let mut applies = true;

    for item in value.split(',') {
        let (scope, directive) = split_agent_scope(item.trim());
        if let Some(agent) = scope {
            applies = agent == "*" || agents.iter().any(|ours| ours.eq_ignore_ascii_case(agent));
        }

        let directive = directive.trim();
        if applies && AI_OPT_OUT_DIRECTIVES.iter().any(|known| known.eq_ignore_ascii_case(directive)) {
            return Some(directive.to_ascii_lowercase());
        }
    }
    None
}

/// Splits `agent: directive` into its scope and directive. `unavailable_after: ...` and the other
/// valued directives have no scope.
fn split_agent_scope(item: &str) -> (Option<&str>, &str) {
    match item.split_once(':') {
        Some((prefix, rest)) if !VALUED_DIRECTIVES.iter().any(|d| d.eq_ignore_ascii_case(prefix.trim())) => {
            (Some(prefix.trim()), rest)
        }
        _ => (None, item),
    }
}

/// Rejects a response whose `Content-Length` exceeds `max_bytes` before its body is read.
fn check_declared_length(headers: &HeaderMap, max_bytes: u64) -> Result<(), FetchError> {
    match declared_length(headers) {
        Some(length) if length > max_bytes => Err(FetchError::permanent(
            RowStatus::TooLarge,
            format!("Content-Length {length} exceeds the {max_bytes} byte limit"),
        )),
        _ => Ok(()),
    }
}

/// Reads the body, stopping as soon as it passes `max_bytes`.
async fn read_capped_body(response: reqwest::Response, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    // A declared length (already checked against the limit) sizes the buffer once, instead of
    // doubling it and copying the body at each step. Reserved pages that a short body never
    // fills are never touched.
    let declared = declared_length(response.headers()).filter(|&length| length <= max_bytes);
    let mut body = Vec::with_capacity(declared.map_or(0, |length| length as usize));
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(classify_reqwest_error)?;
        if body.len() as u64 + chunk.len() as u64 > max_bytes {
            return Err(FetchError::permanent(RowStatus::TooLarge, format!("body exceeds the {max_bytes} byte limit")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Maps a non-success HTTP status. 429, and 503 with `Retry-After`, are rate limiting; 408 and
/// the other 5xx are transient errors; the rest (404, 403, 410 ...) are permanent.
fn http_status_error(status: StatusCode, headers: &HeaderMap) -> FetchError {
    let retry_after = retry_after(headers);
    let rate_limited =
        status == StatusCode::TOO_MANY_REQUESTS || (status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some());
    let transient = rate_limited || status == StatusCode::REQUEST_TIMEOUT || status.is_server_error();

    let row_status = if rate_limited { RowStatus::RateLimited } else { RowStatus::HttpError };
    let message = match retry_after {
        Some(wait) => format!("HTTP {} (Retry-After {:.0} s)", status.as_u16(), wait.as_secs_f64()),
        None => format!("HTTP {}", status.as_u16()),
    };
    FetchError { status: row_status, message, transient, retry_after }
}

/// Parses `Retry-After` given in seconds. HTTP dates are ignored (the backoff applies instead).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn classify_reqwest_error(error: reqwest::Error) -> FetchError {
    if let Some(blocked) = find_cause::<BlockedAddress>(&error) {
        return FetchError::blocked(blocked.clone());
    }
    if let Some(dns) = find_cause::<DnsError>(&error) {
        let status = RowStatus::NetworkError;
        return FetchError { status, message: dns.to_string(), transient: dns.is_temporary(), retry_after: None };
    }

    // reqwest's messages quote the request URL, user information included.
    let message = redact_urls(&error_chain(&error));
    if find_cause::<RedirectError>(&error).is_some() {
        FetchError::permanent(RowStatus::TooManyRedirects, message)
    } else if error.is_timeout() {
        FetchError::transient(RowStatus::Timeout, message)
    } else if error.is_redirect() {
        FetchError::permanent(RowStatus::NetworkError, message)
    } else if error.is_connect() || error.is_request() || error.is_body() || error.is_decode() {
        FetchError::transient(RowStatus::NetworkError, message)
    } else {
        FetchError::permanent(RowStatus::NetworkError, message)
    }
}

/// Finds an error of type `T` in the source chain; the guard's and resolver's errors arrive
/// wrapped in reqwest's and hyper's.
fn find_cause<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(found) = cause.downcast_ref::<T>() {
            return Some(found);
        }
        current = cause.source();
    }
    None
}

/// The error and its sources on one line, since reqwest's top-level message omits the cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

async fn read_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    let metadata = tokio::fs::metadata(path)
        .await
        .map_err(|e| FetchError::permanent(RowStatus::FileError, format!("{}: {e}", path.display())))?;
    if !metadata.is_file() {
        return Err(FetchError::permanent(RowStatus::FileError, format!("{} is not a file", path.display())));
    }
    if metadata.len() > max_bytes {
        return Err(FetchError::permanent(
            RowStatus::TooLarge,
            format!("{} has {} bytes, over the {max_bytes} byte limit", path.display(), metadata.len()),
        ));
    }
    tokio::fs::read(path)
        .await
        .map_err(|e| FetchError::permanent(RowStatus::FileError, format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_relative_path_uses_list_folder() {
        let location = locate("images/cat.jpg", Some(Path::new("/data/lists"))).unwrap();
        assert_eq!(location, ImageLocation::File(PathBuf::from("/data/lists/images/cat.jpg")));
    }

    #[test]
    fn locate_schemes() {
        assert!(matches!(locate("HTTPS://example.com/a.jpg", None), Ok(ImageLocation::Http(_))));
        assert_eq!(locate("file:///tmp/a.png", None), Ok(ImageLocation::File(PathBuf::from("/tmp/a.png"))));
        assert_eq!(
            locate("s3://bucket/dir/a.png", None),
            Ok(ImageLocation::S3 { bucket: "bucket".into(), key: "dir/a.png".into() })
        );
        assert_eq!(locate("s3://bucket", None).unwrap_err().status, RowStatus::InvalidUrl);
        assert_eq!(locate("http://[::1", None).unwrap_err().status, RowStatus::InvalidUrl);
    }

    #[test]
    fn location_debug_hides_password() {
        let location = locate("http://user:secret@127.0.0.1:8080/a.jpg", None).unwrap();
        let shown = format!("{location:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("user"), "{shown}");
        assert!(shown.contains("127.0.0.1:8080/a.jpg"), "{shown}");
    }

    #[test]
    fn status_codes_split_transient_from_permanent() {
        let headers = HeaderMap::new();
        assert!(http_status_error(StatusCode::SERVICE_UNAVAILABLE, &headers).transient);
        assert!(http_status_error(StatusCode::TOO_MANY_REQUESTS, &headers).transient);
        assert!(!http_status_error(StatusCode::NOT_FOUND, &headers).transient);
        assert!(!http_status_error(StatusCode::GONE, &headers).transient);
        assert!(!http_status_error(StatusCode::FORBIDDEN, &headers).transient);
    }

    #[test]
    fn rate_limits_get_their_own_status() {
        let mut with_retry_after = HeaderMap::new();
        with_retry_after.insert(RETRY_AFTER, "7".parse().unwrap());
        let none = HeaderMap::new();

        let too_many = http_status_error(StatusCode::TOO_MANY_REQUESTS, &none);
        assert_eq!(too_many.status, RowStatus::RateLimited);
        let unavailable = http_status_error(StatusCode::SERVICE_UNAVAILABLE, &with_retry_after);
        assert_eq!(unavailable.status, RowStatus::RateLimited);
        assert_eq!(unavailable.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(unavailable.message, "HTTP 503 (Retry-After 7 s)");

        let plain_unavailable = http_status_error(StatusCode::SERVICE_UNAVAILABLE, &none);
        assert_eq!(plain_unavailable.status, RowStatus::HttpError);
        assert!(plain_unavailable.transient);
        assert_eq!(http_status_error(StatusCode::NOT_FOUND, &with_retry_after).status, RowStatus::HttpError);
    }

    fn agents() -> Vec<String> {
        opt_out_agents("capfilt/0.1.0 (image captioning)")
    }

    #[test]
    fn robots_tag_opt_out_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("noai", Some("noai")),
            ("NoImageAI", Some("noimageai")),
            ("  noindex ,  NOAI ", Some("noai")),
            ("noindex, nofollow", None),
            ("noarchive, noimageindex", None),
            ("", None),
            ("noai-training", None),
            ("otherbot: noai", None),
            ("otherbot: noindex, noai", None),
            ("otherbot: noindex, capfilt: noai", Some("noai")),
            ("capfilt: noimageai", Some("noimageai")),
            ("CapFilt: NoAI", Some("noai")),
            ("*: noai", Some("noai")),
            ("noai, otherbot: noindex", Some("noai")),
            ("otherbot: noai, *: noindex", None),
            ("unavailable_after: 25 Jun 2030 15:00:00 PST, noai", Some("noai")),
            ("max-image-preview: large, noimageai", Some("noimageai")),
            ("otherbot: max-snippet: 20, noai", None),
        ];
        for (value, expected) in cases {
            assert_eq!(robots_tag_opt_out(value, &agents()).as_deref(), *expected, "{value:?}");
        }
    }

    #[test]
    fn repeated_robots_headers_each_count() {
        let mut headers = HeaderMap::new();
        headers.append(X_ROBOTS_TAG, "noindex".parse().unwrap());
        headers.append(X_ROBOTS_TAG, "otherbot: noai".parse().unwrap());
        assert_eq!(ai_opt_out(&headers, &agents()), None);

        headers.append(X_ROBOTS_TAG, "noimageai".parse().unwrap());
        assert_eq!(ai_opt_out(&headers, &agents()).as_deref(), Some("noimageai"));
    }

    #[test]
    fn scope_does_not_leak_across_headers() {
        let mut headers = HeaderMap::new();
        headers.append(X_ROBOTS_TAG, "otherbot: noindex".parse().unwrap());
        headers.append(X_ROBOTS_TAG, "noai".parse().unwrap());
        assert_eq!(ai_opt_out(&headers, &agents()).as_deref(), Some("noai"));
    }

    #[test]
    fn configured_user_agent_token_addressed() {
        let agents = opt_out_agents("MyBot/2.0 (+https://example.org/bot)");
        assert_eq!(agents, vec!["capfilt".to_string(), "mybot".to_string()]);
        assert_eq!(robots_tag_opt_out("mybot: noai", &agents).as_deref(), Some("noai"));
        assert_eq!(robots_tag_opt_out("capfilt: noai", &agents).as_deref(), Some("noai"));
    }

    #[test]
    fn redirect_checks() {
        let guard = NetGuard::default();
        let url = |text: &str| Url::parse(text).unwrap();
        let first = url("http://a.test/1");
        let second = url("http://a.test/2");

        assert!(check_redirect(&second, std::slice::from_ref(&first), 5, &guard).is_none());

        let looped = check_redirect(&first, &[first.clone(), second.clone()], 5, &guard).unwrap();
        assert_eq!(looped.downcast_ref::<RedirectError>(), Some(&RedirectError::Loop { url: first.to_string() }));

        let with_password = url("http://user:secret@a.test/1");
        let looped = check_redirect(&with_password, &[with_password.clone(), second.clone()], 5, &guard).unwrap();
        assert_eq!(looped.to_string(), "redirect loop: http://***@a.test/1 was already requested");

        let previous = [first.clone(), second.clone(), url("http://a.test/3")];
        let too_many = check_redirect(&url("http://a.test/4"), &previous, 2, &guard).unwrap();
        assert_eq!(too_many.downcast_ref::<RedirectError>(), Some(&RedirectError::TooMany { max: 2 }));

        let blocked = check_redirect(&url("http://[::1]:8080/"), std::slice::from_ref(&first), 5, &guard).unwrap();
        assert_eq!(blocked.downcast_ref::<BlockedAddress>().map(|b| b.reason), Some("loopback"));
    }

    #[test]
    fn retry_wait_honours_retry_after_limit() {
        let config = DownloadConfig { retries: 2, backoff_secs: 0.5, max_retry_after_secs: 10.0, ..Default::default() };
        let fetcher = Fetcher::new(config).unwrap();
        let limited = |seconds: u64| FetchError {
            status: RowStatus::RateLimited,
            message: String::new(),
            transient: true,
            retry_after: Some(Duration::from_secs(seconds)),
        };

        assert_eq!(fetcher.retry_wait(&limited(3), 0), Some(Duration::from_secs(3)));
        assert_eq!(fetcher.retry_wait(&limited(0), 1), Some(Duration::from_secs(1)), "backoff when larger");
        assert_eq!(fetcher.retry_wait(&limited(11), 0), None, "over max_retry_after_secs");
        assert_eq!(fetcher.retry_wait(&limited(1), 2), None, "out of retries");
        let permanent = FetchError::permanent(RowStatus::HttpError, "HTTP 404");
        assert_eq!(fetcher.retry_wait(&permanent, 0), None);
    }

    #[test]
    fn host_table_forgets_idle_hosts() {
        let limiter = HostLimiter::new(2);
        let held = limiter.semaphore_for("kept.test:80".into());
        for i in 0..3 * HOST_TABLE_MIN_PRUNE {
            drop(limiter.semaphore_for(format!("host{i}.test:80")));
        }

        let table = limiter.table.lock().unwrap();
        assert!(table.semaphores.len() <= HOST_TABLE_MIN_PRUNE, "{} entries", table.semaphores.len());
        assert!(table.semaphores["kept.test:80"].upgrade().is_some_and(|s| Arc::ptr_eq(&s, &held)));
    }

    #[test]
    fn host_key_includes_port() {
        let key = |text: &str| host_key(&Url::parse(text).unwrap());
        assert_eq!(key("https://Img.Example.com/a.jpg"), "img.example.com:443");
        assert_eq!(key("http://img.example.com:8080/a.jpg"), "img.example.com:8080");
        assert_ne!(key("http://a.test/"), key("http://b.test/"));
    }

    #[test]
    fn invalid_allowed_cidr_fails_construction() {
        let config = DownloadConfig { allowed_cidrs: vec!["10.0.0.0/40".into()], ..Default::default() };
        assert!(config.validate().is_err());
        let error = Fetcher::new(config).err().unwrap();
        assert!(format!("{error:#}").contains("--allow-cidr"), "{error:#}");
        assert!(format!("{error:#}").contains("10.0.0.0/40"), "{error:#}");
    }

    #[test]
    fn retry_after_seconds_parsed() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
