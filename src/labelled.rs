//! Labels written by earlier runs, so an incremental run (`--skip-labelled`) captions only rows
//! that no earlier run captioned with the same models and settings.
//!
//! Only 64-bit hashes are kept: the first 8 bytes of the SHA-256 of each URL (`--skip-by url`)
//! or the first 8 bytes of each image's SHA-256 (`--skip-by content`), each mapped to the earlier
//! shard file that contains the label. The table is a `HashMap<u64, u32>` whose entries take 16 bytes
//! plus one control byte, in a power-of-two number of buckets at most 7/8 full, so it needs about
//! 20 to 36 MB per million labelled rows.
//!
//! NOTE: two different URLs (or images) share a 64-bit hash with probability 2^-64 per pair, so a
//! new row is wrongly taken as labelled with probability about n / 2^64 for n labelled rows (one
//! in 18 billion per new row at a billion labelled rows).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use arrow::array::{Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use sha2::{Digest, Sha256};

use crate::config::SkipBy;
use crate::status::RowStatus;

/// Metadata key that may differ between runs whose labels are interchangeable: a new capfilt
/// version with the same models and settings writes the same captions.
const VERSION_KEY: &str = "capfilt.version";

/// Hashes of the rows that earlier runs labelled `ok`, and the shard files they came from.
#[derive(Debug)]
pub struct LabelledIndex {
    mode: SkipBy,
    /// Hash of a URL or of an image's SHA-256, mapped to an index into `sources`.
    labels: HashMap<u64, u32>,
    /// Per earlier shard file: the text stored in the `error` column of the rows it matches.
    sources: Vec<String>,
}

/// Counts from loading the earlier runs, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadCounts {
    /// Shard files written with the current models and settings.
    pub matching_shards: usize,
    /// Shard files written with other models or settings, or by another tool.
    pub other_settings: usize,
    /// Shard files that could not be read.
    pub unreadable: usize,
    /// `ok` rows found in the matching shards.
    pub ok_rows: u64,
}

impl LabelledIndex {
    /// Reads every shard file under `paths` (folders of shard files, or single files) and keeps
    /// the `ok` rows of those whose capfilt metadata matches `current` (the metadata this run
    /// writes), ignoring `capfilt.version`. A path that does not exist is an error, because a
    /// mistyped folder would otherwise silently make the run caption everything again.
    pub fn load(
        paths: &[String],
        mode: SkipBy,
        current: &HashMap<String, String>,
    ) -> anyhow::Result<(Self, LoadCounts)> {
        let mut index = Self {
            mode,
            labels: HashMap::new(),
            sources: Vec::new(),
        };
        let mut counts = LoadCounts::default();

        for path in paths {
            for file in shard_files(path)? {
                index.add_file(&file, current, &mut counts);
            }
        }

        index.labels.shrink_to_fit();
        Ok((index, counts))
    }

    pub fn mode(&self) -> SkipBy {
        self.mode
    }

    /// Distinct labelled URLs or images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Estimated bytes the hash table takes (see the module documentation).
    pub fn estimated_bytes(&self) -> usize {
        let buckets = (self.labels.capacity() * 8 / 7).next_power_of_two();
        buckets * (std::mem::size_of::<(u64, u32)>() + 1)
    }

    /// Returns where `url` was labelled, when matching by URL and an earlier run labelled it.
    pub fn labelled_url(&self, url: &str) -> Option<&str> {
        if self.mode != SkipBy::Url {
            return None;
        }
        self.source_of(url_hash(url))
    }

    /// Returns where an image with this hex SHA-256 was labelled, when matching by content.
    pub fn labelled_content(&self, sha256_hex: &str) -> Option<&str> {
        if self.mode != SkipBy::Content {
            return None;
        }
        self.source_of(content_hash(sha256_hex)?)
    }

    fn source_of(&self, hash: u64) -> Option<&str> {
        self.labels
            .get(&hash)
            .map(|&i| self.sources[i as usize].as_str())
    }

    fn add_file(
        &mut self,
        file: &Path,
        current: &HashMap<String, String>,
        counts: &mut LoadCounts,
    ) {
        let source = self.sources.len() as u32;
        let hashes = match read_ok_hashes(file, self.mode, current) {
            Ok(Some(hashes)) => hashes,
            Ok(None) => {
                counts.other_settings += 1;
                return;
            }
            Err(error) => {
                tracing::warn!(file = %file.display(), error = %format!("{error:#}"), "cannot read an earlier shard file; its rows will be captioned again");
                counts.unreadable += 1;
                return;
            }
        };

        counts.matching_shards += 1;
        counts.ok_rows += hashes.len() as u64;
        for hash in hashes {
            // An image labelled by several earlier shards keeps the first one found.
            self.labels.entry(hash).or_insert(source);
        }
        self.sources.push(source_text(file));
    }
}

/// Returns the first 8 bytes of the URL's SHA-256. A fixed hash, unlike `DefaultHasher`, so the value
/// would stay the same if the table were ever persisted.
pub fn url_hash(url: &str) -> u64 {
    let digest = Sha256::digest(url.as_bytes());
    u64::from_be_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    )
}

/// Parses the first 16 hex digits of a hex SHA-256, or returns `None` when the text is not one.
pub fn content_hash(sha256_hex: &str) -> Option<u64> {
    if sha256_hex.len() != 64 {
        return None;
    }
    u64::from_str_radix(sha256_hex.get(..16)?, 16).ok()
}

fn source_text(file: &Path) -> String {
    let shard = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "labelled ok by an earlier run in shard {shard} ({})",
        file.display()
    )
}

/// Lists the shard files a `--skip-labelled` path names: the path itself when it is a file, or
/// the visible `.parquet` files in the folder (temporary files start with a dot).
fn shard_files(path: &str) -> anyhow::Result<Vec<PathBuf>> {
    if path.contains("://") {
        bail!("--skip-labelled {path:?}: only local folders and files are supported; copy the earlier shards to a local folder");
    }
    let path = Path::new(path);
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !path.is_dir() {
        bail!("--skip-labelled {}: no such folder or file", path.display());
    }

    let entries =
        std::fs::read_dir(path).with_context(|| format!("failed to list {}", path.display()))?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "parquet"))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    // Sorted, so which earlier shard an error names does not depend on directory order.
    files.sort();
    Ok(files)
}

/// Checks whether two files' capfilt metadata describe the same models and settings. Every
/// `capfilt.*` key except the version must be equal or absent in both, so a filter that was on
/// in one run and off in the other counts as a difference.
pub fn same_settings(earlier: &HashMap<String, String>, current: &HashMap<String, String>) -> bool {
    let compared = |key: &&String| key.starts_with("capfilt.") && key.as_str() != VERSION_KEY;
    let keys = earlier.keys().chain(current.keys()).filter(compared);
    let mut keys = keys.peekable();
    if keys.peek().is_none() {
        return false;
    }
    keys.all(|key| earlier.get(key) == current.get(key))
}

/// Returns the hashes of the file's `ok` rows, or `None` when it was written with other models
/// or settings.
fn read_ok_hashes(
    file: &Path,
    mode: SkipBy,
    current: &HashMap<String, String>,
) -> anyhow::Result<Option<Vec<u64>>> {
    let reader = File::open(file).with_context(|| format!("failed to open {}", file.display()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader)?;

    let metadata: HashMap<String, String> = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|pairs| {
            pairs
                .iter()
                .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?)))
                .collect()
        })
        .unwrap_or_default();
    if !same_settings(&metadata, current) {
        return Ok(None);
    }

    let key_column = match mode {
        SkipBy::Url => "url",
        SkipBy::Content => "sha256",
    };
    let schema = builder.schema().clone();
    let status_index = schema
        .index_of("status")
        .context("the file has no status column")?;
    let key_index = schema
        .index_of(key_column)
        .with_context(|| format!("the file has no {key_column} column"))?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [status_index, key_index]);

    let mut hashes = Vec::new();
    for batch in builder.with_projection(mask).build()? {
        let batch = batch?;
        let statuses = string_column(&batch, "status")?;
        let keys = string_column(&batch, key_column)?;
        for row in 0..batch.num_rows() {
            if statuses.is_null(row)
                || statuses.value(row) != RowStatus::Ok.as_str()
                || keys.is_null(row)
            {
                continue;
            }
            let hash = match mode {
                SkipBy::Url => Some(url_hash(keys.value(row))),
                SkipBy::Content => content_hash(keys.value(row)),
            };
            hashes.extend(hash);
        }
    }
    Ok(Some(hashes))
}

fn string_column<'a>(
    batch: &'a arrow::array::RecordBatch,
    name: &str,
) -> anyhow::Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .with_context(|| format!("column {name} is not a string column"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{write_shard, OutputRow};

    fn metadata(settings: &str) -> HashMap<String, String> {
        HashMap::from([
            ("capfilt.version".to_string(), "0.1.0".to_string()),
            ("capfilt.captioner.model".to_string(), "blip".to_string()),
            ("capfilt.caption.settings".to_string(), settings.to_string()),
        ])
    }

    fn row(url: &str, status: RowStatus, sha256: &str) -> OutputRow {
        OutputRow {
            key: url.into(),
            url: Some(url.into()),
            status: Some(status),
            sha256: Some(sha256.into()),
            ..Default::default()
        }
    }

    #[test]
    fn settings_compare_every_key_but_the_version() {
        let current = metadata("{\"num_beams\":3}");
        let mut newer = current.clone();
        newer.insert("capfilt.version".into(), "9.9.9".into());
        let mut filtered = current.clone();
        filtered.insert("capfilt.filter.model".into(), "itm".into());

        assert!(
            same_settings(&newer, &current),
            "another capfilt version with the same settings matches"
        );
        assert!(
            !same_settings(&metadata("{\"num_beams\":1}"), &current),
            "other caption settings"
        );
        assert!(
            !same_settings(&filtered, &current),
            "the filter was on in one run only"
        );
        assert!(
            !same_settings(&HashMap::new(), &HashMap::new()),
            "files without capfilt metadata never match"
        );
    }

    #[test]
    fn only_ok_rows_of_matching_shards_are_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (same, other) = (metadata("{\"num_beams\":3}"), metadata("{\"num_beams\":1}"));
        let sha_a = format!("{:064x}", 0xaau8);
        let rows = [
            row("http://127.0.0.1/a.jpg", RowStatus::Ok, &sha_a),
            row("http://127.0.0.1/b.jpg", RowStatus::HttpError, ""),
        ];
        write_shard(dir.path(), "run1-00000", &[], &rows, &same).unwrap();
        write_shard(
            dir.path(),
            "run1-00001",
            &[],
            &[row("http://127.0.0.1/c.jpg", RowStatus::Ok, &sha_a)],
            &other,
        )
        .unwrap();
        std::fs::write(dir.path().join(".run1-00002.parquet.1.tmp"), b"partial").unwrap();
        let paths = [dir.path().display().to_string()];

        let (by_url, counts) = LabelledIndex::load(&paths, SkipBy::Url, &same).unwrap();
        let (by_content, _) = LabelledIndex::load(&paths, SkipBy::Content, &same).unwrap();

        assert_eq!(
            counts,
            LoadCounts {
                matching_shards: 1,
                other_settings: 1,
                unreadable: 0,
                ok_rows: 1
            }
        );
        assert!(by_url
            .labelled_url("http://127.0.0.1/a.jpg")
            .is_some_and(|s| s.contains("run1-00000")));
        assert!(
            by_url.labelled_url("http://127.0.0.1/b.jpg").is_none(),
            "failed rows are retried"
        );
        assert!(
            by_url.labelled_url("http://127.0.0.1/c.jpg").is_none(),
            "other settings are ignored"
        );
        assert!(
            by_url.labelled_content(&sha_a).is_none(),
            "matching by URL ignores content"
        );
        assert!(by_content.labelled_content(&sha_a).is_some());
        assert!(by_content.labelled_url("http://127.0.0.1/a.jpg").is_none());
    }

    #[test]
    fn missing_folder_and_remote_paths_are_errors() {
        let missing = LabelledIndex::load(
            &["/no/such/capfilt/run".into()],
            SkipBy::Url,
            &HashMap::new(),
        )
        .unwrap_err();
        assert!(missing.to_string().contains("no such folder"), "{missing}");
        let remote =
            LabelledIndex::load(&["s3://bucket/run1".into()], SkipBy::Url, &HashMap::new())
                .unwrap_err();
        assert!(remote.to_string().contains("only local"), "{remote}");
    }

    #[test]
    fn corrupt_shard_file_is_counted_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("broken-00000.parquet"), b"not parquet").unwrap();

        let (index, counts) = LabelledIndex::load(
            &[dir.path().display().to_string()],
            SkipBy::Url,
            &metadata("{}"),
        )
        .unwrap();

        assert_eq!(counts.unreadable, 1);
        assert!(index.is_empty());
    }

    #[test]
    fn content_hash_needs_a_full_hex_digest() {
        assert_eq!(content_hash(&format!("{:064x}", 1u8)), Some(0));
        assert_eq!(
            content_hash(&format!("ff{}", "0".repeat(62))),
            Some(0xff00_0000_0000_0000)
        );
        assert_eq!(content_hash("abc"), None);
        assert_eq!(content_hash(&"z".repeat(64)), None);
    }
}
