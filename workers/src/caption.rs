//! Captioning a batch of preprocessed images: tokenizer, prompt handling and the decoding
//! strategy around [`CaptionModel`].

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::blip::model::{read_config, var_builder};
use crate::blip::search::{beam_search, greedy, sample, BeamSettings, SampleSettings, SearchLimits, Sequence, StopReason};
use crate::blip::{CaptionModel, CheckpointFiles};
use crate::error::ModelError;

/// Caption decoding settings. The defaults are BLIP's captioning evaluation: beam search with 3
/// beams, 20 tokens at most and 5 at least (prompt included), prompt `"a picture of "`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptionSettings {
    /// `greedy`, `beam` or `sample` (nucleus sampling).
    pub decoding: Decoding,
    pub num_beams: usize,
    /// Captions per image when sampling; greedy and beam search give one.
    pub num_captions: usize,
    pub top_p: f32,
    /// 0 disables top-k filtering.
    pub top_k: usize,
    pub temperature: f32,
    /// Seed of the sampling streams; with the same seed an image gets the same captions in any
    /// batch.
    pub seed: u64,
    /// Token limits, counted with the prompt as transformers' `max_length`/`min_length` are.
    pub max_length: usize,
    pub min_length: usize,
    /// Limits on generated tokens alone; when set they replace `max_length`/`min_length`.
    pub max_new_tokens: Option<usize>,
    pub min_new_tokens: Option<usize>,
    /// Forbid repeating any n-gram of this size (0: off).
    pub no_repeat_ngram_size: usize,
    pub repetition_penalty: f32,
    pub length_penalty: f32,
    pub early_stopping: bool,
    /// Text the decoder continues from, removed from the stored caption. Empty for none.
    pub prompt: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Decoding {
    Greedy,
    Beam,
    Sample,
}

impl Default for CaptionSettings {
    fn default() -> Self {
        Self {
            decoding: Decoding::Beam,
            num_beams: 3,
            num_captions: 1,
            top_p: 0.9,
            top_k: 0,
            temperature: 1.0,
            seed: 0,
            max_length: 20,
            min_length: 5,
            max_new_tokens: None,
            min_new_tokens: None,
            no_repeat_ngram_size: 0,
            repetition_penalty: 1.0,
            length_penalty: 1.0,
            early_stopping: false,
            prompt: "a picture of ".to_string(),
        }
    }
}

impl CaptionSettings {
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.decoding == Decoding::Beam && self.num_beams == 0 {
            return Err(ModelError::Settings("num_beams must be at least 1".into()));
        }
        if self.max_new_tokens == Some(0) {
            return Err(ModelError::Settings("max_new_tokens must be at least 1".into()));
        }
        if self.max_length == 0 {
            return Err(ModelError::Settings("max_length must be at least 1".into()));
        }
        if self.min_length > self.max_length {
            return Err(ModelError::Settings(format!(
                "min_length {} exceeds max_length {}",
                self.min_length, self.max_length
            )));
        }
        if self.decoding == Decoding::Sample {
            if self.num_captions == 0 {
                return Err(ModelError::Settings("num_captions must be at least 1".into()));
            }
            if !(self.top_p > 0.0 && self.top_p <= 1.0) {
                return Err(ModelError::Settings(format!("top_p must be in (0, 1], got {}", self.top_p)));
            }
            if !(self.temperature > 0.0) {
                return Err(ModelError::Settings(format!("temperature must be positive, got {}", self.temperature)));
            }
        }
        if !(self.repetition_penalty > 0.0) {
            return Err(ModelError::Settings("repetition_penalty must be positive".into()));
        }
        Ok(())
    }
}

/// A generated caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Caption {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    pub score: Option<f32>,
}

/// A loaded captioning model with its tokenizer and decoding settings.
pub struct Captioner {
    model: CaptionModel,
    tokenizer: Tokenizer,
    settings: CaptionSettings,
    prompt_ids: Vec<u32>,
    device: Device,
    dtype: DType,
}

impl Captioner {
    /// Loads a checkpoint. The prompt is tokenised as BLIP does: `[CLS]` becomes the decoder's
    /// start token `[DEC]` and the trailing `[SEP]` is dropped.
    pub fn load(files: &CheckpointFiles, settings: CaptionSettings, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        settings.validate()?;
        let config = read_config(&files.config)?;
        let vb = var_builder(&files.weights, dtype, device)?;
        let model = CaptionModel::load(config, vb).map_err(|source| ModelError::Load { path: files.weights[0].clone(), source })?;
        let tokenizer = Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| ModelError::Tokenizer { path: files.tokenizer.clone(), message: e.to_string() })?;
        let prompt_ids = prompt_tokens(&tokenizer, &settings.prompt, model.config.text_config.bos_token_id)
            .map_err(|message| ModelError::Tokenizer { path: files.tokenizer.clone(), message })?;
        Ok(Self { model, tokenizer, settings, prompt_ids, device: device.clone(), dtype })
    }

    /// Side length of the square input images the vision encoder expects.
    pub fn image_size(&self) -> usize {
        self.model.config.vision_config.image_size
    }

    pub fn settings(&self) -> &CaptionSettings {
        &self.settings
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Builds the pixel tensor `[images, 3, size, size]` from preprocessed f32 values.
    pub fn pixel_tensor(&self, pixels: &[f32], images: usize) -> Result<Tensor, ModelError> {
        let size = self.image_size();
        Ok(Tensor::from_slice(pixels, (images, 3, size, size), &self.device)?.to_dtype(self.dtype)?)
    }

    /// Captions a batch of pixel values `[images, 3, size, size]`: one caption per image, or
    /// `num_captions` when sampling. `seeds` (one per image) drive sampling and are ignored
    /// otherwise.
    pub fn caption(&self, pixel_values: &Tensor, seeds: &[u64]) -> Result<Vec<Vec<Caption>>, ModelError> {
        self.caption_with_prompts(pixel_values, seeds, None)
    }

    /// Like [`Captioner::caption`], with a prompt per image (`None` uses the configured prompt).
    /// Prompts of different lengths share the batch: shorter ones are left-padded and the
    /// padding is hidden from attention.
    pub fn caption_with_prompts(
        &self,
        pixel_values: &Tensor,
        seeds: &[u64],
        prompts: Option<&[Option<String>]>,
    ) -> Result<Vec<Vec<Caption>>, ModelError> {
        let prompt_ids = self.prompt_ids_for(pixel_values.dim(0)?, prompts)?;
        let sequences = self.generate_from(pixel_values, seeds, &prompt_ids)?;
        sequences
            .into_iter()
            .zip(&prompt_ids)
            .map(|(per_image, prompt)| per_image.into_iter().map(|sequence| self.to_caption(sequence, prompt)).collect())
            .collect()
    }

    /// Token sequences (prompt included) for a batch, as transformers' `generate()` returns them.
    pub fn generate(&self, pixel_values: &Tensor, seeds: &[u64]) -> Result<Vec<Vec<Sequence>>, ModelError> {
        let prompt_ids = self.prompt_ids_for(pixel_values.dim(0)?, None)?;
        self.generate_from(pixel_values, seeds, &prompt_ids)
    }

    /// Like [`Captioner::generate`], with a prompt per image (`None` uses the configured prompt).
    pub fn generate_with_prompts(
        &self,
        pixel_values: &Tensor,
        seeds: &[u64],
        prompts: &[Option<String>],
    ) -> Result<Vec<Vec<Sequence>>, ModelError> {
        let prompt_ids = self.prompt_ids_for(pixel_values.dim(0)?, Some(prompts))?;
        self.generate_from(pixel_values, seeds, &prompt_ids)
    }

    fn prompt_ids_for(&self, images: usize, prompts: Option<&[Option<String>]>) -> Result<Vec<Vec<u32>>, ModelError> {
        let Some(prompts) = prompts else {
            return Ok(vec![self.prompt_ids.clone(); images]);
        };
        if prompts.len() != images {
            return Err(ModelError::Settings(format!("{} prompts given for {images} images", prompts.len())));
        }
        let bos = self.model.config.text_config.bos_token_id;
        prompts
            .iter()
            .map(|prompt| match prompt {
                None => Ok(self.prompt_ids.clone()),
                Some(text) => prompt_tokens(&self.tokenizer, text, bos)
                    .map_err(|message| ModelError::Tokenizer { path: "tokenizer.json".into(), message }),
            })
            .collect()
    }

    /// Runs the decoding strategy. Images whose prompt already fills `max_length` are not run:
    /// they end at once with their prompt and `max_length` as the stop reason.
    fn generate_from(&self, pixel_values: &Tensor, seeds: &[u64], prompts: &[Vec<u32>]) -> Result<Vec<Vec<Sequence>>, ModelError> {
        let images = pixel_values.dim(0)?;
        if self.settings.decoding == Decoding::Sample && seeds.len() != images {
            return Err(ModelError::Settings(format!("{} seeds given for {images} images", seeds.len())));
        }

        let max_length = |prompt_len: usize| self.settings.max_new_tokens.map_or(self.settings.max_length, |n| prompt_len + n);
        let runnable: Vec<u32> = (0..images).filter(|&i| prompts[i].len() < max_length(prompts[i].len())).map(|i| i as u32).collect();
        let mut results: Vec<Vec<Sequence>> = prompts
            .iter()
            .map(|prompt| {
                let sequence = Sequence { tokens: prompt.clone(), stop: StopReason::MaxLength, score: None };
                vec![sequence; self.captions_per_image()]
            })
            .collect();
        if runnable.is_empty() {
            return Ok(results);
        }

        let pixel_values = if runnable.len() == images {
            pixel_values.clone()
        } else {
            pixel_values.index_select(&Tensor::from_slice(&runnable, runnable.len(), pixel_values.device())?, 0)?
        };
        let prompts: Vec<Vec<u32>> = runnable.iter().map(|&i| prompts[i as usize].clone()).collect();
        let seeds: Vec<u64> = runnable.iter().map(|&i| seeds.get(i as usize).copied().unwrap_or(self.settings.seed)).collect();

        let generated = self.search(&pixel_values, &prompts, &seeds)?;
        for (&image, sequences) in runnable.iter().zip(generated) {
            results[image as usize] = sequences;
        }
        Ok(results)
    }

    fn captions_per_image(&self) -> usize {
        match self.settings.decoding {
            Decoding::Sample => self.settings.num_captions,
            Decoding::Greedy | Decoding::Beam => 1,
        }
    }

    fn search(&self, pixel_values: &Tensor, prompts: &[Vec<u32>], seeds: &[u64]) -> Result<Vec<Vec<Sequence>>, ModelError> {
        let image_embeds = self.model.encode_images(pixel_values)?;
        let mut decoder = self.model.decoder(&image_embeds)?;
        let text_config = &self.model.config.text_config;
        let limits = SearchLimits {
            max_length: self.settings.max_length,
            min_length: self.settings.min_length,
            repetition_penalty: self.settings.repetition_penalty,
            end_token: text_config.sep_token_id,
            pad_token: text_config.pad_token_id,
            max_new_tokens: self.settings.max_new_tokens,
            min_new_tokens: self.settings.min_new_tokens,
            no_repeat_ngram_size: self.settings.no_repeat_ngram_size,
        };

        let one_each = |sequences: Vec<Sequence>| sequences.into_iter().map(|s| vec![s]).collect();
        let sequences = match self.settings.decoding {
            Decoding::Greedy => one_each(greedy(&mut decoder, prompts, &limits)?),
            Decoding::Beam => {
                let beam = BeamSettings {
                    num_beams: self.settings.num_beams,
                    length_penalty: self.settings.length_penalty,
                    early_stopping: self.settings.early_stopping,
                };
                one_each(beam_search(&mut decoder, prompts, &limits, &beam)?)
            }
            Decoding::Sample => {
                let settings = SampleSettings {
                    num_samples: self.settings.num_captions,
                    top_p: self.settings.top_p,
                    top_k: self.settings.top_k,
                    temperature: self.settings.temperature,
                };
                sample(&mut decoder, prompts, seeds, &limits, &settings)?
            }
        };
        Ok(sequences)
    }

    /// Vision encoder output `[images, tokens, width]`, exposed for reference comparisons.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.model.encode_images(pixel_values)?)
    }

    /// Logits `[images, vocab]` for the first generated position after the prompt.
    pub fn first_step_logits(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        let images = pixel_values.dim(0)?;
        let image_embeds = self.model.encode_images(pixel_values)?;
        let mut decoder = self.model.decoder(&image_embeds)?;
        let prompt: Vec<u32> = (0..images).flat_map(|_| self.prompt_ids.iter().copied()).collect();
        let input_ids = Tensor::from_vec(prompt, (images, self.prompt_ids.len()), &self.device)?;
        Ok(decoder.logits(&input_ids, 1)?)
    }

    fn to_caption(&self, sequence: Sequence, prompt: &[u32]) -> Result<Caption, ModelError> {
        let text = self.decode_text(&sequence.tokens, prompt)?;
        Ok(Caption { text, tokens: sequence.tokens, stop: sequence.stop, score: sequence.score })
    }

    /// Decodes tokens and removes the prompt, as BLIP does: the decoded text starts with the
    /// prompt's own decoding, which is cut off.
    fn decode_text(&self, tokens: &[u32], prompt_ids: &[u32]) -> Result<String, ModelError> {
        let decode = |ids: &[u32]| {
            self.tokenizer
                .decode(ids, true)
                .map_err(|e| ModelError::Tokenizer { path: "tokenizer.json".into(), message: e.to_string() })
        };
        let full = decode(tokens)?;
        let prompt = decode(prompt_ids)?;

        let text = match full.strip_prefix(prompt.as_str()) {
            Some(rest) => rest.trim().to_string(),
            None => decode(&tokens[prompt_ids.len().min(tokens.len())..])?.trim().to_string(),
        };
        Ok(text)
    }
}

/// Token ids of a caption prompt: the decoder start token, then the prompt's word pieces.
pub fn prompt_tokens(tokenizer: &Tokenizer, prompt: &str, bos_token_id: u32) -> Result<Vec<u32>, String> {
    if prompt.trim().is_empty() {
        return Ok(vec![bos_token_id]);
    }
    let encoding = tokenizer.encode(prompt, true).map_err(|e| e.to_string())?;
    let mut ids = encoding.get_ids().to_vec();
    if ids.len() < 2 {
        return Err(format!("prompt {prompt:?} tokenised to {ids:?}, expected [CLS] ... [SEP]"));
    }
    ids[0] = bos_token_id;
    ids.pop();
    Ok(ids)
}
