//! The run configuration: built-in presets, a TOML file, `CAPFILT_*` environment variables and
//! command-line flags, applied in that order.

use std::path::Path;

use anyhow::{bail, Context};
use capfilt_workers::filter::{FilterSettings, FirstToken};
use capfilt_workers::CaptionSettings;
use serde::{Deserialize, Serialize};

use crate::fetch::DownloadConfig;

/// Presets shipped in `configs/`, selectable by name with `--config NAME`.
pub const PRESETS: [(&str, &str); 4] = [
    ("default", include_str!("../configs/default.toml")),
    ("capfilt", include_str!("../configs/capfilt.toml")),
    ("quality", include_str!("../configs/quality.toml")),
    ("fast", include_str!("../configs/fast.toml")),
];

/// Everything a run needs besides its inputs and output location.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub input: InputConfig,
    pub model: ModelConfig,
    pub download: DownloadConfig,
    pub image: ImageConfig,
    pub caption: CaptionSettings,
    pub filter: FilterConfig,
    pub run: RunSettings,
}

/// CapFilt's filter: BLIP's image-text matching head scores the web caption and every
/// generated caption; a text is kept when its P(match) reaches the threshold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    pub enabled: bool,
    /// Hub id or local folder of a `BlipForImageTextRetrieval` checkpoint.
    pub model: String,
    pub revision: Option<String>,
    /// Smallest P(match) for which a text is kept.
    pub threshold: f32,
    /// `enc` (BLIP's training) or `cls` (transformers' default) as the first text token.
    pub first_token: FirstToken,
    /// Token limit per text, `[CLS]`/`[ENC]` and `[SEP]` included.
    pub max_tokens: usize,
    /// Word limit applied when cleaning texts.
    pub max_words: usize,
    /// Also store ITC cosines.
    pub itc: bool,
}

impl Default for FilterConfig {
    fn default() -> Self {
        let settings = FilterSettings::default();
        Self {
            enabled: false,
            model: "Salesforce/blip-itm-large-coco".into(),
            revision: None,
            threshold: settings.threshold,
            first_token: settings.first_token,
            max_tokens: settings.max_tokens,
            max_words: settings.max_words,
            itc: settings.itc,
        }
    }
}

impl FilterConfig {
    pub fn settings(&self) -> FilterSettings {
        FilterSettings {
            threshold: self.threshold,
            first_token: self.first_token,
            max_tokens: self.max_tokens,
            max_words: self.max_words,
            itc: self.itc,
        }
    }
}

/// URL-list reading settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `json`, `jsonl`, `csv`, `tsv`, `txt` or `parquet`; detected from the extension when unset.
    pub format: Option<String>,
    pub url_col: Option<String>,
    pub caption_col: Option<String>,
    pub key_col: Option<String>,
    pub keep_cols: Vec<String>,
    /// Whether CSV and TSV files start with a header row.
    pub header: bool,
}

impl Default for InputConfig {
    fn default() -> Self {
        Self { format: None, url_col: None, caption_col: None, key_col: None, keep_cols: Vec::new(), header: true }
    }
}

/// Captioning checkpoint and compute device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Hub id or local folder in Hugging Face layout.
    pub id: String,
    pub revision: Option<String>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Only use files already in the Hugging Face cache.
    pub offline: bool,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            id: "Salesforce/blip-image-captioning-large".into(),
            revision: None,
            device: "cpu".into(),
            offline: false,
        }
    }
}

/// Image acceptance limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImageConfig {
    /// Largest decoded image accepted, in pixels (width x height as declared in the header).
    pub max_pixels: u64,
    /// Smallest accepted side in pixels; smaller images end as `too_small`. 0 accepts all.
    pub min_size: u32,
    /// Decode large JPEGs at a reduced DCT scale whose sides stay at least twice the model's
    /// input size. Much faster on photos; pixels differ slightly from a full decode.
    pub jpeg_dct_scaling: bool,
}

impl Default for ImageConfig {
    fn default() -> Self {
        // The decoder's default: PIL's decompression-bomb threshold, which admits photos up to
        // about 60 MP.
        Self { max_pixels: capfilt_workers::image::DecodeLimits::default().max_pixels, min_size: 0, jpeg_dct_scaling: false }
    }
}

/// Batching and sharding.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Input rows per output file.
    pub shard_size: usize,
    /// Images per model batch.
    pub batch_size: usize,
    /// Prepared batches allowed to wait for the model.
    pub prefetch_batches: usize,
    /// Threads decoding and resizing images; 0 uses every core.
    pub decode_threads: usize,
    /// Milliseconds the model waits to fill a batch before running a partial one.
    pub batch_linger_ms: u64,
    /// Redo shards whose output file already exists instead of skipping them.
    pub overwrite: bool,
    /// Output folders (or single shard files) of earlier runs whose `ok` rows this run does not
    /// caption again. Only shards written with the same models and settings count.
    pub skip_labelled: Vec<String>,
    /// Row property matched against the earlier runs' labels.
    pub skip_by: SkipBy,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            shard_size: 10_000,
            batch_size: 16,
            prefetch_batches: 2,
            decode_threads: 0,
            batch_linger_ms: 200,
            overwrite: false,
            skip_labelled: Vec::new(),
            skip_by: SkipBy::Url,
        }
    }
}

/// Row property that identifies an image already labelled by an earlier run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SkipBy {
    /// The URL as written in the input: a match is not downloaded at all.
    #[default]
    Url,
    /// The SHA-256 of the downloaded bytes: a match is downloaded but not captioned, which
    /// also catches the same image under a new URL.
    Content,
}

impl RunConfig {
    /// Loads `--config`: a preset name from `configs/` or a TOML file path; the built-in default
    /// preset without one.
    pub fn load(config: Option<&str>) -> anyhow::Result<Self> {
        let Some(name) = config else {
            return Self::from_toml(PRESETS[0].1, "preset default");
        };
        if let Some((_, text)) = PRESETS.iter().find(|(preset, _)| *preset == name) {
            return Self::from_toml(text, &format!("preset {name}"));
        }

        let path = Path::new(name);
        if !path.is_file() {
            let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
            bail!("config {name} is neither a file nor a preset (presets: {})", names.join(", "));
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("failed to read config {}", path.display()))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    fn from_toml(text: &str, origin: &str) -> anyhow::Result<Self> {
        toml::from_str(text).with_context(|| format!("invalid config in {origin}"))
    }

    /// Rejects settings that cannot run.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.run.shard_size == 0 {
            bail!("shard_size must be at least 1");
        }
        if self.run.batch_size == 0 {
            bail!("batch_size must be at least 1");
        }
        if self.download.concurrency == 0 {
            bail!("download concurrency must be at least 1");
        }
        if self.download.max_bytes == 0 {
            bail!("download max_bytes must be at least 1");
        }
        if !(self.download.timeout_secs > 0.0) || !(self.download.connect_timeout_secs > 0.0) {
            bail!("download timeouts must be positive");
        }
        self.caption.validate()?;
        if self.filter.enabled {
            self.filter.settings().validate()?;
        }
        Ok(())
    }

    /// Renders the configuration as TOML for logs. It contains no secrets, because credentials
    /// come only from the environment and are never copied into it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# config could not be shown: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse_and_validate() {
        for (name, _) in PRESETS {
            let config = RunConfig::load(Some(name)).unwrap();
            config.validate().unwrap_or_else(|e| panic!("preset {name}: {e}"));
        }
    }

    #[test]
    fn default_preset_matches_blip_evaluation() {
        let config = RunConfig::load(None).unwrap();
        assert_eq!(config.caption.num_beams, 3);
        assert_eq!(config.caption.max_length, 20);
        assert_eq!(config.caption.min_length, 5);
        assert_eq!(config.caption.prompt, "a picture of ");
        assert_eq!(config.model.id, "Salesforce/blip-image-captioning-large");
        assert_eq!(config.run.shard_size, 10_000);
    }

    #[test]
    fn capfilt_preset_is_blip_recipe() {
        let config = RunConfig::load(Some("capfilt")).unwrap();
        assert_eq!(config.caption.decoding, capfilt_workers::Decoding::Sample);
        assert_eq!(config.caption.top_p, 0.9);
        assert_eq!(config.caption.repetition_penalty, 1.1);
        assert!(config.filter.enabled);
        assert_eq!(config.filter.threshold, 0.5);
        assert_eq!(config.filter.model, "Salesforce/blip-itm-large-coco");
    }

    #[test]
    fn unknown_keys_rejected() {
        let error = RunConfig::from_toml("[run]\nshard_sise = 3\n", "test").unwrap_err();
        assert!(format!("{error:#}").contains("shard_sise"), "{error:#}");
    }

    #[test]
    fn unknown_preset_names_presets() {
        let error = RunConfig::load(Some("nonexistent-preset")).unwrap_err();
        assert!(error.to_string().contains("quality"), "{error}");
    }
}
