//! Turning the INPUT arguments into local files: local paths, directories and globs go to the
//! coordinator's resolver; `https://` and `s3://` list files are downloaded first.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use capfilt_coordinator::{resolve_inputs, InputFile};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use crate::redact::redact_urls;
use crate::s3::S3Url;

/// Resolves every INPUT argument, downloading remote lists into `download_dir`.
pub async fn resolve(patterns: &[String], fetcher: &crate::fetch::Fetcher, download_dir: &Path) -> anyhow::Result<Vec<InputFile>> {
    let mut files = Vec::new();
    let mut local = Vec::new();

    for pattern in patterns {
        let lower = pattern.to_ascii_lowercase();
        if lower.starts_with("http://") || lower.starts_with("https://") {
            let path = download_list(pattern, fetcher, download_dir, files.len()).await?;
            // The label names the input in keys, shard ids, messages and the manifest, so it
            // leaves out any password. A list therefore keeps its shard ids when its password
            // changes.
            files.push(InputFile::new(path, redact_urls(pattern)));
        } else if lower.starts_with("s3://") {
            let path = download_s3_list(pattern, fetcher, download_dir, files.len()).await?;
            files.push(InputFile::new(path, redact_urls(pattern)));
        } else {
            local.push(pattern.clone());
        }
    }

    if !local.is_empty() {
        let paths = resolve_inputs(&local)?;
        files.extend(paths.into_iter().map(InputFile::local));
    }
    Ok(files)
}

/// Streams a remote URL list to disk, keeping its file name so the format can be detected.
async fn download_list(url: &str, fetcher: &crate::fetch::Fetcher, dir: &Path, index: usize) -> anyhow::Result<PathBuf> {
    let shown = redact_urls(url);
    let parsed = reqwest::Url::parse(url).with_context(|| format!("invalid input URL {shown}"))?;
    // The guarded resolver checks names; an IP literal never reaches it, so check it here.
    fetcher.check_url(&parsed).map_err(|e| anyhow::anyhow!("input {shown} rejected: {}", e.message))?;
    let client = fetcher.client();
    let name = parsed.path_segments().and_then(|mut s| s.next_back()).filter(|n| !n.is_empty()).unwrap_or("list.txt");
    let path = dir.join(format!("{index:04}-{name}"));

    let response = client.get(parsed.clone()).send().await.map_err(|e| download_error(&shown, &e))?;
    if !response.status().is_success() {
        bail!("failed to download input {shown}: HTTP {}", response.status().as_u16());
    }

    let mut file = tokio::fs::File::create(&path).await.with_context(|| format!("failed to create {}", path.display()))?;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| download_error(&shown, &e))?;
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(path)
}

/// Streams an `s3://bucket/key` list to disk.
async fn download_s3_list(url: &str, fetcher: &crate::fetch::Fetcher, dir: &Path, index: usize) -> anyhow::Result<PathBuf> {
    let parsed = S3Url::parse(url)?;
    if parsed.key.is_empty() || parsed.key.ends_with('/') {
        bail!("input {url}: an s3:// input must name one object, not a prefix");
    }
    let name = parsed.key.rsplit('/').next().unwrap_or("list.txt");
    let path = dir.join(format!("{index:04}-{name}"));

    let client = fetcher.s3().get().await;
    let response = client
        .get_object()
        .bucket(&parsed.bucket)
        .key(&parsed.key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("failed to download input {url}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))?;

    let mut file = tokio::fs::File::create(&path).await.with_context(|| format!("failed to create {}", path.display()))?;
    let mut body = response.body.into_async_read();
    tokio::io::copy(&mut body, &mut file).await.with_context(|| format!("failed to download input {url}"))?;
    file.flush().await?;
    Ok(path)
}

/// reqwest's message quotes the request URL, so the cause is kept only as redacted text.
fn download_error(shown: &str, error: &reqwest::Error) -> anyhow::Error {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    anyhow::anyhow!("failed to download input {shown}: {}", redact_urls(&message))
}
