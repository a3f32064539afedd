//! Image downloads: HTTP(S) with pooled connections, deadlines, a byte cap enforced while
//! streaming, bounded redirects and retries with backoff for transient failures; local files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, RETRY_AFTER};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

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
        }
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
    fn permanent(status: RowStatus, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), transient: false, retry_after: None }
    }

    fn transient(status: RowStatus, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), transient: true, retry_after: None }
    }
}

/// Where an image's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageLocation {
    Http(reqwest::Url),
    File(PathBuf),
    S3 { bucket: String, key: String },
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

/// Downloads image bytes. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    config: DownloadConfig,
}

impl Fetcher {
    pub fn new(config: DownloadConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .connect_timeout(Duration::from_secs_f64(config.connect_timeout_secs))
            .redirect(reqwest::redirect::Policy::limited(config.max_redirects))
            .pool_max_idle_per_host(16)
            .gzip(true)
            .build()?;
        Ok(Self { client, config })
    }

    /// The HTTP client, for other downloads that share its pool and settings.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn config(&self) -> &DownloadConfig {
        &self.config
    }

    /// Fetches the bytes at `location`, retrying transient failures with exponential backoff.
    pub async fn fetch(&self, location: &ImageLocation) -> Result<Vec<u8>, FetchError> {
        match location {
            ImageLocation::Http(url) => self.fetch_http_with_retries(url).await,
            ImageLocation::File(path) => read_file(path, self.config.max_bytes).await,
            ImageLocation::S3 { bucket, key } => Err(FetchError::permanent(
                RowStatus::UnsupportedUrl,
                format!("s3://{bucket}/{key}: S3 image URLs are not supported by this build"),
            )),
        }
    }

    async fn fetch_http_with_retries(&self, url: &reqwest::Url) -> Result<Vec<u8>, FetchError> {
        let mut attempt = 0;
        loop {
            let error = match self.fetch_http_once(url).await {
                Ok(bytes) => return Ok(bytes),
                Err(error) => error,
            };
            if !error.transient || attempt >= self.config.retries {
                return Err(error);
            }

            let backoff = Duration::from_secs_f64(self.config.backoff_secs * 2f64.powi(attempt as i32));
            let wait = match error.retry_after {
                Some(wait) if wait.as_secs_f64() > self.config.max_retry_after_secs => return Err(error),
                Some(wait) => wait.max(backoff),
                None => backoff,
            };
            tracing::debug!(%url, attempt, wait_ms = wait.as_millis() as u64, error = %error.message, "retrying download");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn fetch_http_once(&self, url: &reqwest::Url) -> Result<Vec<u8>, FetchError> {
        let deadline = Duration::from_secs_f64(self.config.timeout_secs);
        match tokio::time::timeout(deadline, self.request(url)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::transient(
                RowStatus::Timeout,
                format!("download did not finish within {:.1} s", deadline.as_secs_f64()),
            )),
        }
    }

    async fn request(&self, url: &reqwest::Url) -> Result<Vec<u8>, FetchError> {
        let response = self.client.get(url.clone()).send().await.map_err(classify_reqwest_error)?;

        let status = response.status();
        if !status.is_success() {
            return Err(http_status_error(status, response.headers()));
        }
        if let Some(length) = declared_length(response.headers()) {
            if length > self.config.max_bytes {
                return Err(FetchError::permanent(
                    RowStatus::TooLarge,
                    format!("Content-Length {length} exceeds the {} byte limit", self.config.max_bytes),
                ));
            }
        }

        read_capped_body(response, self.config.max_bytes).await
    }
}

/// Reads the body, stopping as soon as it passes `max_bytes`.
async fn read_capped_body(response: reqwest::Response, max_bytes: u64) -> Result<Vec<u8>, FetchError> {
    let mut body = Vec::new();
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

/// Maps a non-success HTTP status: 408, 429 and 5xx are transient, the rest permanent.
fn http_status_error(status: StatusCode, headers: &HeaderMap) -> FetchError {
    let message = format!("HTTP {}", status.as_u16());
    let transient = status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
    FetchError { status: RowStatus::HttpError, message, transient, retry_after: retry_after(headers) }
}

/// Parses `Retry-After` given in seconds. HTTP dates are ignored (the backoff applies instead).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: f64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

fn classify_reqwest_error(error: reqwest::Error) -> FetchError {
    let message = error_chain(&error);
    if error.is_timeout() {
        FetchError::transient(RowStatus::Timeout, message)
    } else if error.is_redirect() {
        FetchError::permanent(RowStatus::NetworkError, message)
    } else if error.is_connect() || error.is_request() || error.is_body() || error.is_decode() {
        FetchError::transient(RowStatus::NetworkError, message)
    } else {
        FetchError::permanent(RowStatus::NetworkError, message)
    }
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
    fn status_codes_split_transient_from_permanent() {
        let headers = HeaderMap::new();
        assert!(http_status_error(StatusCode::SERVICE_UNAVAILABLE, &headers).transient);
        assert!(http_status_error(StatusCode::TOO_MANY_REQUESTS, &headers).transient);
        assert!(!http_status_error(StatusCode::NOT_FOUND, &headers).transient);
        assert!(!http_status_error(StatusCode::GONE, &headers).transient);
        assert!(!http_status_error(StatusCode::FORBIDDEN, &headers).transient);
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
