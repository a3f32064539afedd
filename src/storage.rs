//! Run storage for distributed runs: a local (or shared) folder, or an S3 prefix.
//!
//! Objects are named by relative paths built from validated ids. Writes are all-or-nothing: a
//! local file is written under a temporary name and renamed, and an S3 object becomes visible
//! only when its `PutObject` or multipart upload completes, so a reader never sees a partial
//! shard under its final name.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;

use crate::s3::S3Url;

/// Files above this size are uploaded in parts, so a single request never carries a whole
/// multi-gigabyte shard and a failed part is retried alone.
const MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;

/// Part size for multipart uploads; S3 requires at least 5 MiB for every part but the last.
const PART_SIZE: usize = 16 * 1024 * 1024;

/// A run's storage location.
#[derive(Clone)]
pub enum Storage {
    Local {
        root: PathBuf,
    },
    S3 {
        client: Client,
        bucket: String,
        prefix: String,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.uri())
    }
}

impl Storage {
    /// Opens `uri`: an `s3://bucket/prefix` URL or a local folder path (created if missing).
    pub async fn open(uri: &str) -> anyhow::Result<Self> {
        if crate::s3::strip_scheme(uri).is_some() {
            let url = S3Url::parse(uri)?;
            let client = crate::s3::client().await;
            let prefix = url.key.trim_matches('/').to_string();
            return Ok(Storage::S3 {
                client,
                bucket: url.bucket,
                prefix,
            });
        }
        if uri.contains("://") {
            bail!("unsupported storage location {uri:?}: expected a folder path or s3://BUCKET/PREFIX");
        }

        // Absolute, because the path travels in jobs to workers started in other folders.
        let root = std::path::absolute(uri).with_context(|| format!("invalid folder {uri:?}"))?;
        std::fs::create_dir_all(&root)
            .with_context(|| format!("failed to create folder {}", root.display()))?;
        Ok(Storage::Local { root })
    }

    /// Returns the location as a URI, for logs and manifests.
    pub fn uri(&self) -> String {
        match self {
            Storage::Local { root } => root.display().to_string(),
            Storage::S3 { bucket, prefix, .. } if prefix.is_empty() => format!("s3://{bucket}"),
            Storage::S3 { bucket, prefix, .. } => format!("s3://{bucket}/{prefix}"),
        }
    }

    /// Returns the full location of the object `name`.
    pub fn describe(&self, name: &str) -> String {
        format!("{}/{name}", self.uri().trim_end_matches('/'))
    }

    /// Stores `bytes` as `name`, replacing any previous object.
    pub async fn put_bytes(&self, name: &str, bytes: Vec<u8>) -> anyhow::Result<()> {
        check_name(name)?;
        match self {
            Storage::Local { root } => {
                let path = root.join(name);
                tokio::task::spawn_blocking(move || write_local(&path, &bytes))
                    .await
                    .context("file writer stopped")?
            }
            Storage::S3 { client, bucket, .. } => {
                let key = self.key(name);
                client
                    .put_object()
                    .bucket(bucket)
                    .key(&key)
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "failed to write s3://{bucket}/{key}: {}",
                            DisplayErrorContext(&e)
                        )
                    })?;
                Ok(())
            }
        }
    }

    /// Stores the local file at `path` as `name`, replacing any previous object.
    pub async fn put_file(&self, name: &str, path: &Path) -> anyhow::Result<()> {
        check_name(name)?;
        match self {
            Storage::Local { root } => {
                let (source, target) = (path.to_path_buf(), root.join(name));
                tokio::task::spawn_blocking(move || copy_local(&source, &target))
                    .await
                    .context("file writer stopped")?
            }
            Storage::S3 { client, bucket, .. } => {
                let key = self.key(name);
                upload_file(client, bucket, &key, path)
                    .await
                    .with_context(|| {
                        format!("failed to upload {} to s3://{bucket}/{key}", path.display())
                    })
            }
        }
    }

    /// Reads the object `name`, or returns `None` when it does not exist.
    pub async fn get(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        check_name(name)?;
        match self {
            Storage::Local { root } => match tokio::fs::read(root.join(name)).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(anyhow::anyhow!(
                    "failed to read {}: {e}",
                    self.describe(name)
                )),
            },
            Storage::S3 { client, bucket, .. } => get_object(client, bucket, &self.key(name)).await,
        }
    }

    fn key(&self, name: &str) -> String {
        match self {
            Storage::S3 { prefix, .. } if !prefix.is_empty() => format!("{prefix}/{name}"),
            _ => name.to_string(),
        }
    }
}

/// Rejects object names that could leave the storage root. Names are built from validated ids,
/// so this only catches a programming error before it writes somewhere unexpected.
fn check_name(name: &str) -> anyhow::Result<()> {
    let escapes = name.is_empty()
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if escapes {
        bail!("invalid object name {name:?}");
    }
    Ok(())
}

fn write_local(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let temp = temp_path(path)?;
    std::fs::write(&temp, bytes).with_context(|| format!("failed to write {}", temp.display()))?;
    std::fs::rename(&temp, path)
        .with_context(|| format!("failed to move {} into place", path.display()))
}

/// Copies through a temporary file beside the target: a rename is atomic only within one
/// file system, and the source may be on another.
fn copy_local(source: &Path, target: &Path) -> anyhow::Result<()> {
    if source == target {
        return Ok(());
    }
    let temp = temp_path(target)?;
    std::fs::copy(source, &temp)
        .with_context(|| format!("failed to copy {} to {}", source.display(), temp.display()))?;
    if let Err(error) = std::fs::rename(&temp, target) {
        let _ = std::fs::remove_file(&temp);
        return Err(error)
            .with_context(|| format!("failed to move {} into place", target.display()));
    }
    Ok(())
}

fn temp_path(path: &Path) -> anyhow::Result<PathBuf> {
    let parent = path.parent().context("object path has no parent folder")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("failed to create folder {}", parent.display()))?;
    let name = path
        .file_name()
        .context("object path has no file name")?
        .to_string_lossy();
    Ok(parent.join(format!(".{name}.{}.tmp", std::process::id())))
}

async fn get_object(client: &Client, bucket: &str, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let response = match client.get_object().bucket(bucket).key(key).send().await {
        Ok(response) => response,
        Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
            return Ok(None)
        }
        Err(error) => bail!(
            "failed to read s3://{bucket}/{key}: {}",
            DisplayErrorContext(&error)
        ),
    };
    let bytes = response
        .body
        .collect()
        .await
        .with_context(|| format!("failed to read s3://{bucket}/{key}"))?;
    Ok(Some(bytes.into_bytes().to_vec()))
}

async fn upload_file(client: &Client, bucket: &str, key: &str, path: &Path) -> anyhow::Result<()> {
    let size = tokio::fs::metadata(path).await?.len();
    if size <= MULTIPART_THRESHOLD {
        let body = ByteStream::from_path(path).await?;
        client
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(body)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))?;
        return Ok(());
    }
    upload_multipart(client, bucket, key, path).await
}

/// Uploads in parts and completes the upload only after every part succeeded. On failure the
/// upload is aborted, so no partial object and no orphaned parts remain.
async fn upload_multipart(
    client: &Client,
    bucket: &str,
    key: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let created = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))?;
    let upload_id = created
        .upload_id()
        .context("S3 returned no upload id")?
        .to_string();

    let result = upload_parts(client, bucket, key, &upload_id, path).await;
    let parts = match result {
        Ok(parts) => parts,
        Err(error) => {
            let _ = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
            return Err(error);
        }
    };

    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(&upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{}", DisplayErrorContext(&e)))?;
    Ok(())
}

async fn upload_parts(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    path: &Path,
) -> anyhow::Result<Vec<CompletedPart>> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut parts = Vec::new();
    let mut buffer = vec![0u8; PART_SIZE];
    for number in 1.. {
        let filled = read_full(&mut file, &mut buffer).await?;
        if filled == 0 {
            break;
        }

        let part = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(buffer[..filled].to_vec()))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("part {number}: {}", DisplayErrorContext(&e)))?;
        parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(part.e_tag().map(str::to_string))
                .build(),
        );
    }
    Ok(parts)
}

/// Fills `buffer` unless the file ends first, and returns how many bytes were read.
async fn read_full(file: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;

    let mut filled = 0;
    while filled < buffer.len() {
        let read = file.read(&mut buffer[filled..]).await?;
        if read == 0 {
            break;
        }
        filled += read;
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_stay_inside_root() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a\\b",
            "a/./b",
            "nul\0byte",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(check_name("_capfilt/runs/r1/rows/abc-00001.jsonl.gz").is_ok());
    }
}
