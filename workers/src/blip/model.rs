//! `BlipForConditionalGeneration`: the captioning model, loaded from a checkpoint folder in
//! Hugging Face layout.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use super::config::BlipConfig;
use super::search::StepDecoder;
use super::text::{last_token, AttentionMode, ImageKeyValues, LmHead, SelfCache, TextModel};
use super::vision::VisionModel;
use crate::error::ModelError;

/// Local paths of a checkpoint's files.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub config: PathBuf,
    /// `model.safetensors` (or its shards), or `pytorch_model.bin`.
    pub weights: Vec<PathBuf>,
    pub tokenizer: PathBuf,
}

impl CheckpointFiles {
    /// Finds the files of a checkpoint folder in Hugging Face layout.
    pub fn in_dir(dir: &Path) -> Result<Self, ModelError> {
        let config = require_file(dir, "config.json")?;
        let tokenizer = require_file(dir, "tokenizer.json")?;
        let weights = find_weights(dir)?;
        Ok(Self { config, weights, tokenizer })
    }
}

fn require_file(dir: &Path, name: &str) -> Result<PathBuf, ModelError> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ModelError::MissingFile { dir: dir.to_path_buf(), name: name.to_string() })
    }
}

fn find_weights(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }

    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            name.starts_with("model-") && name.ends_with(".safetensors")
        })
        .collect();
    shards.sort();
    if !shards.is_empty() {
        return Ok(shards);
    }

    let pickle = dir.join("pytorch_model.bin");
    if pickle.is_file() {
        return Ok(vec![pickle]);
    }
    Err(ModelError::MissingFile { dir: dir.to_path_buf(), name: "model.safetensors".to_string() })
}

/// Opens checkpoint weights as a [`VarBuilder`] in `dtype` on `device`.
pub fn var_builder(weights: &[PathBuf], dtype: DType, device: &Device) -> Result<VarBuilder<'static>, ModelError> {
    let is_pickle = weights.len() == 1 && weights[0].extension().is_some_and(|e| e == "bin");
    let result = if is_pickle {
        VarBuilder::from_pth(&weights[0], dtype, device)
    } else {
        // SAFETY: the weight files are memory-mapped read-only and capfilt never writes to them.
        // No loader can guard against a checkpoint replaced on disk while it is mapped.
        unsafe { VarBuilder::from_mmaped_safetensors(weights, dtype, device) }
    };
    result.map_err(|source| ModelError::Weights { path: weights[0].clone(), source })
}

pub fn read_config(path: &Path) -> Result<BlipConfig, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    BlipConfig::from_json(&text).map_err(|source| ModelError::Config { path: path.to_path_buf(), source })
}

/// The captioner: ViT image encoder, BERT decoder with cross-attention, LM head.
pub struct CaptionModel {
    vision: VisionModel,
    text: TextModel,
    head: LmHead,
    pub config: BlipConfig,
}

impl CaptionModel {
    /// Builds the model from `vision_model.*` and `text_decoder.*` tensors. A tensor missing
    /// from the checkpoint is an error naming it; nothing is randomly initialised.
    pub fn load(config: BlipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let vision = VisionModel::load(&config.vision_config, vb.pp("vision_model"))?;
        let decoder = vb.pp("text_decoder");
        let text = TextModel::load(&config.text_config, decoder.pp("bert"))?;
        let head = LmHead::load(&config.text_config, decoder.pp("cls"), text.word_embeddings().clone())?;
        Ok(Self { vision, text, head, config })
    }

    /// Encodes pixel values `[images, 3, size, size]` into image tokens.
    pub fn encode_images(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.vision.forward(pixel_values)
    }

    /// Starts decoding for a batch of encoded images.
    pub fn decoder(&self, image_embeds: &Tensor) -> candle_core::Result<Decoder<'_>> {
        Ok(Decoder {
            model: self,
            image: self.text.image_keys_values(image_embeds)?,
            cache: SelfCache::new(self.text.num_layers()),
            padding: Vec::new(),
            key_mask: None,
            device: image_embeds.device().clone(),
        })
    }
}

/// Additive mask value for padded keys. It is finite, unlike the causal mask's `-inf`, so a
/// padding query whose every visible key is padding still gets a defined softmax.
const PADDING_MASK: f32 = -1.0e9;

/// Decoding state of one batch: cross-attention keys/values per image, the self-attention cache
/// per row, and each row's left padding.
pub struct Decoder<'a> {
    model: &'a CaptionModel,
    image: ImageKeyValues,
    cache: SelfCache,
    /// Left padding tokens per row; prompts shorter than the batch's longest are padded.
    padding: Vec<u32>,
    /// Additive key mask `[rows, cached tokens]`, present only when some row is padded.
    key_mask: Option<Tensor>,
    device: Device,
}

impl Decoder<'_> {
    /// Last-position logits `[rows, vocab]` after feeding `input_ids` `[rows, tokens]`.
    pub fn logits(&mut self, input_ids: &Tensor, group: usize) -> candle_core::Result<Tensor> {
        let (rows, tokens) = input_ids.dims2()?;
        let past = self.cache.len();
        let positions = self.positions(rows, past, tokens)?;
        let key_mask = self.extend_key_mask(rows, tokens)?;
        let key_mask = key_mask.map(|m| m.reshape((rows, 1, 1, past + tokens))).transpose()?;

        let mode = AttentionMode::Decoder {
            cache: &mut self.cache,
            image: &self.image,
            group,
            positions: &positions,
            key_mask: key_mask.as_ref(),
        };
        let hidden = self.model.text.forward(input_ids, mode)?;
        self.model.head.forward(&last_token(&hidden)?)
    }

    /// Position ids `[rows, tokens]`: each row counts from its first real token, so a padded row
    /// gets the positions it would get alone.
    fn positions(&self, rows: usize, past: usize, tokens: usize) -> candle_core::Result<Tensor> {
        let padding = |row: usize| self.padding.get(row).copied().unwrap_or(0) as usize;
        let ids: Vec<u32> = (0..rows)
            .flat_map(|row| (past..past + tokens).map(move |t| t.saturating_sub(padding(row)) as u32))
            .collect();
        Tensor::from_vec(ids, (rows, tokens), &self.device)
    }

    /// Appends the new tokens to the key mask: padding positions are hidden, real tokens visible.
    fn extend_key_mask(&mut self, rows: usize, tokens: usize) -> candle_core::Result<Option<Tensor>> {
        if self.key_mask.is_none() && self.padding.iter().all(|&p| p == 0) {
            return Ok(None);
        }
        let past = self.cache.len();
        let values: Vec<f32> = (0..rows)
            .flat_map(|row| {
                let padding = self.padding.get(row).copied().unwrap_or(0) as usize;
                (past..past + tokens).map(move |t| if t < padding { PADDING_MASK } else { 0.0 })
            })
            .collect();
        let new = Tensor::from_vec(values, (rows, tokens), &self.device)?;
        let mask = match self.key_mask.take() {
            Some(old) => Tensor::cat(&[&old, &new], 1)?,
            None => new,
        };
        self.key_mask = Some(mask.clone());
        Ok(Some(mask))
    }

    fn logits_to_host(&mut self, input_ids: Tensor, group: usize) -> candle_core::Result<Vec<f32>> {
        let logits = self.logits(&input_ids, group)?;
        logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
    }
}

impl StepDecoder for Decoder<'_> {
    fn prefill(&mut self, prompts: &[Vec<u32>], group: usize, pad_token: u32) -> candle_core::Result<Vec<f32>> {
        let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
        self.padding = prompts.iter().map(|p| (longest - p.len()) as u32).collect();
        let ids: Vec<u32> = prompts
            .iter()
            .flat_map(|prompt| std::iter::repeat_n(pad_token, longest - prompt.len()).chain(prompt.iter().copied()))
            .collect();
        let input_ids = Tensor::from_vec(ids, (prompts.len(), longest), &self.device)?;
        self.logits_to_host(input_ids, group)
    }

    fn step(&mut self, tokens: &[u32], group: usize) -> candle_core::Result<Vec<f32>> {
        let input_ids = Tensor::from_slice(tokens, (tokens.len(), 1), &self.device)?;
        self.logits_to_host(input_ids, group)
    }

    fn select(&mut self, images: &[u32], rows: &[u32]) -> candle_core::Result<()> {
        if images.len() != self.image.images() {
            let indices = Tensor::from_slice(images, images.len(), &self.device)?;
            self.image = self.image.select_images(&indices)?;
        }
        if !rows.is_empty() {
            let indices = Tensor::from_slice(rows, rows.len(), &self.device)?;
            self.cache.select_rows(&indices)?;
            if let Some(mask) = &self.key_mask {
                self.key_mask = Some(mask.index_select(&indices, 0)?);
            }
            if !self.padding.is_empty() {
                self.padding = rows.iter().map(|&r| self.padding[r as usize]).collect();
            }
        }
        Ok(())
    }

    fn vocab_size(&self) -> usize {
        self.model.config.text_config.vocab_size
    }
}
