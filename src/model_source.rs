//! Finds checkpoint files: a local folder in Hugging Face layout, or a hub repository id fetched
//! through hf-hub into the standard HF cache (`HF_HOME`, `HF_ENDPOINT` and `HF_TOKEN` honoured).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use capfilt_workers::blip::CheckpointFiles;
use hf_hub::{Repo, RepoType};
use serde::Serialize;

/// A checkpoint ready to load, and where it came from.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedModel {
    /// The id or folder the user named.
    pub id: String,
    /// `local` or `hub`.
    pub source: &'static str,
    /// The revision asked for and, for hub models, the commit it resolved to.
    pub revision: Option<String>,
    pub commit: Option<String>,
    pub dir: PathBuf,
    /// Input side length of the vision encoder, known once the model is loaded.
    pub image_size: usize,
    /// SHA-256 of the weights file, for provenance.
    pub weights_sha256: Option<String>,
    #[serde(skip)]
    pub files: CheckpointFiles,
}

const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Resolves `id_or_dir`: an existing folder is used as is; anything else is a hub repository id.
/// With `offline`, hub files must already be in the cache.
pub fn resolve(id_or_dir: &str, revision: Option<&str>, offline: bool) -> anyhow::Result<ResolvedModel> {
    let path = Path::new(id_or_dir);
    if path.is_dir() {
        let files = CheckpointFiles::in_dir(path)?;
        return Ok(ResolvedModel {
            id: id_or_dir.to_string(),
            source: "local",
            revision: None,
            commit: None,
            dir: path.to_path_buf(),
            image_size: 0,
            weights_sha256: weights_sha256(&files.weights),
            files,
        });
    }
    if looks_like_path(id_or_dir) {
        bail!("model folder {id_or_dir} does not exist");
    }

    let repo = Repo::with_revision(id_or_dir.to_string(), RepoType::Model, revision.unwrap_or("main").to_string());
    let offline = offline || env_flag("HF_HUB_OFFLINE");
    let fetch = |name: &str| if offline { cached_file(&repo, name) } else { download_file(&repo, name) };

    let config = fetch("config.json")?;
    let tokenizer = fetch("tokenizer.json")?;
    let weights = fetch_weights(&fetch, id_or_dir)?;
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    let weights = vec![weights];

    Ok(ResolvedModel {
        id: id_or_dir.to_string(),
        source: "hub",
        revision: Some(revision.unwrap_or("main").to_string()),
        commit: snapshot_commit(&config),
        dir,
        image_size: 0,
        weights_sha256: weights_sha256(&weights),
        files: CheckpointFiles { config, weights, tokenizer },
    })
}

fn fetch_weights(fetch: &dyn Fn(&str) -> anyhow::Result<PathBuf>, id: &str) -> anyhow::Result<PathBuf> {
    let mut errors = Vec::new();
    for name in WEIGHT_FILES {
        match fetch(name) {
            Ok(path) => return Ok(path),
            Err(error) => errors.push(format!("{name}: {error:#}")),
        }
    }
    bail!("model {id} has no weights file: {}", errors.join("; "))
}

fn download_file(repo: &Repo, name: &str) -> anyhow::Result<PathBuf> {
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let mut builder = hf_hub::api::sync::ApiBuilder::from_env().with_progress(false);
    if token.is_some() {
        builder = builder.with_token(token);
    }
    let api = builder.build().context("failed to set up the Hugging Face hub client")?;
    api.repo(repo.clone())
        .get(name)
        .with_context(|| format!("failed to download {name} of {} at revision {}", repo.folder_name(), repo.revision()))
}

fn cached_file(repo: &Repo, name: &str) -> anyhow::Result<PathBuf> {
    hf_hub::Cache::from_env()
        .repo(repo.clone())
        .get(name)
        .with_context(|| format!("{name} of {} is not in the Hugging Face cache (offline mode)", repo.folder_name()))
}

/// Hashes the weight files (several shards hash in order, as one stream). Reading a 1.8 GB
/// checkpoint takes a few seconds once per run; the hash proves which weights made the output.
fn weights_sha256(paths: &[PathBuf]) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for path in paths {
        let mut file = std::fs::File::open(path).ok()?;
        std::io::copy(&mut file, &mut hasher).ok()?;
    }
    Some(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Extracts the commit hash from a path `.../snapshots/<commit>/<file>` in the HF cache.
fn snapshot_commit(path: &Path) -> Option<String> {
    let snapshot = path.parent()?;
    let parent = snapshot.parent()?;
    (parent.file_name()? == "snapshots").then(|| snapshot.file_name()?.to_str().map(str::to_string)).flatten()
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with('.') || s.starts_with('/') || s.starts_with('~') || s.matches('/').count() > 1
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_commit_from_cache_path() {
        let path = Path::new("/cache/models--a--b/snapshots/0123abcd/config.json");
        assert_eq!(snapshot_commit(path).as_deref(), Some("0123abcd"));
        assert_eq!(snapshot_commit(Path::new("/models/blip/config.json")), None);
    }

    #[test]
    fn missing_local_folder_is_an_error() {
        let error = resolve("./no/such/model", None, true).unwrap_err();
        assert!(error.to_string().contains("does not exist"), "{error}");
    }
}
