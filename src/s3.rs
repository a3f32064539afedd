//! S3 access shared by image downloads, URL lists and run storage.
//!
//! Credentials, region and endpoint come from the AWS SDK's standard chain (environment,
//! profile files, SSO, instance and container roles). Two settings are added for S3-compatible
//! stores: `CAPFILT_S3_ENDPOINT` overrides the endpoint (the SDK's own `AWS_ENDPOINT_URL` works
//! too) and `CAPFILT_S3_PATH_STYLE=true` puts the bucket in the path instead of the host name.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::Client;
use tokio::sync::OnceCell;

use crate::fetch::FetchError;
use crate::status::RowStatus;

/// Parts of an `s3://bucket/key` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub key: String,
}

impl S3Url {
    /// Parses `s3://bucket/key`; the key may be empty (a bucket root used as a prefix).
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest =
            strip_scheme(url).ok_or_else(|| anyhow::anyhow!("{url:?} is not an s3:// URL"))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            anyhow::bail!("{url:?} has no bucket name; expected s3://BUCKET/KEY");
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }
}

impl std::fmt::Display for S3Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Returns what follows `s3://` (any case), or `None` for another scheme.
pub fn strip_scheme(url: &str) -> Option<&str> {
    let prefix = url.get(..5)?;
    prefix.eq_ignore_ascii_case("s3://").then(|| &url[5..])
}

/// Builds a client from the standard AWS configuration chain plus capfilt's endpoint settings.
pub async fn client() -> Client {
    let shared = aws_config::load_from_env().await;
    let mut builder = aws_sdk_s3::config::Builder::from(&shared);

    if let Some(endpoint) = std::env::var("CAPFILT_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
    {
        builder = builder.endpoint_url(endpoint.trim());
    }
    if env_flag("CAPFILT_S3_PATH_STYLE") {
        builder = builder.force_path_style(true);
    }
    Client::from_conf(builder.build())
}

/// A client built on first use, so runs without S3 never load AWS configuration.
#[derive(Clone, Default)]
pub struct LazyClient {
    cell: std::sync::Arc<OnceCell<Client>>,
}

impl LazyClient {
    pub async fn get(&self) -> &Client {
        self.cell.get_or_init(client).await
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Downloads an object, failing with `too_large` once it exceeds `max_bytes`.
pub async fn get_capped(
    client: &Client,
    url: &S3Url,
    max_bytes: u64,
) -> Result<Vec<u8>, FetchError> {
    let response = client
        .get_object()
        .bucket(&url.bucket)
        .key(&url.key)
        .send()
        .await
        .map_err(|e| classify_get_error(url, e))?;

    let declared = response.content_length().unwrap_or(0).max(0) as u64;
    if declared > max_bytes {
        return Err(FetchError::permanent(
            RowStatus::TooLarge,
            format!("{url}: object is {declared} bytes, over the {max_bytes}-byte cap"),
        ));
    }

    read_capped(url, response.body, max_bytes).await
}

async fn read_capped(
    url: &S3Url,
    mut body: aws_sdk_s3::primitives::ByteStream,
    max_bytes: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            FetchError::transient(RowStatus::NetworkError, format!("{url}: read failed: {e}"))
        })?;
        if (bytes.len() + chunk.len()) as u64 > max_bytes {
            return Err(FetchError::permanent(
                RowStatus::TooLarge,
                format!("{url}: object is over the {max_bytes}-byte cap"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Missing objects and access errors are final; throttling, server and transport errors may pass.
fn classify_get_error(url: &S3Url, error: SdkError<GetObjectError>) -> FetchError {
    let message = format!("{url}: {}", DisplayErrorContext(&error));
    if let SdkError::ServiceError(service) = &error {
        if service.err().is_no_such_key() {
            return FetchError::permanent(RowStatus::HttpError, format!("{url}: no such object"));
        }
        let status = service.raw().status().as_u16();
        if status == 429 || status == 503 {
            return FetchError::transient(RowStatus::RateLimited, message);
        }
        if status >= 500 {
            return FetchError::transient(RowStatus::HttpError, message);
        }
        return FetchError::permanent(RowStatus::HttpError, message);
    }
    FetchError::transient(RowStatus::NetworkError, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_key() {
        let url = S3Url::parse("s3://photos/2024/a b.jpg").unwrap();
        assert_eq!(url.bucket, "photos");
        assert_eq!(url.key, "2024/a b.jpg");
        assert_eq!(S3Url::parse("S3://bucket").unwrap().key, "");
    }

    #[test]
    fn rejects_missing_bucket() {
        assert!(S3Url::parse("s3:///key").is_err());
        assert!(S3Url::parse("https://bucket/key").is_err());
    }
}
