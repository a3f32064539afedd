//! CapFilt's filter: scores (image, caption) pairs with BLIP's image-text matching head and
//! keeps the captions the head judges to match their image.
//!
//! Captions are cleaned as BLIP cleans them ([`clean_caption`]), tokenised with truncation,
//! padded to the longest in the batch, and scored by [`ItmModel`]. The ITC cosine is an
//! optional extra score; the keep decision uses the ITM probability alone.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use tokenizers::{Tokenizer, TruncationParams};

use crate::blip::itm::ItmModel;
use crate::blip::model::{read_config, var_builder};
use crate::blip::CheckpointFiles;
use crate::error::ModelError;

/// The token that Salesforce's BLIP code puts first in ITM inputs instead of `[CLS]`.
pub const ENC_TOKEN: &str = "[ENC]";

/// Choice of the first token of the text fed to the ITM head.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FirstToken {
    /// `[ENC]` (30523 in BLIP's vocabulary), which Salesforce's BLIP code uses for ITM.
    #[default]
    Enc,
    /// `[CLS]`, which transformers' tokenizer produces and `BlipForImageTextRetrieval` keeps
    /// unless the caller replaces it.
    Cls,
}

/// Caption filter settings. The defaults follow BLIP's CapFilt: `[ENC]` first, captions
/// cleaned to 50 words and cut to 35 tokens, kept when P(match) is at least 0.5.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSettings {
    /// Smallest ITM P(match) for which a caption is kept.
    pub threshold: f32,
    pub first_token: FirstToken,
    /// Token limit, `[CLS]` and `[SEP]` included.
    pub max_tokens: usize,
    /// Word limit applied by [`clean_caption`] before tokenising.
    pub max_words: usize,
    /// Also compute the ITC cosine of each pair.
    pub itc: bool,
}

impl Default for FilterSettings {
    fn default() -> Self {
        Self { threshold: 0.5, first_token: FirstToken::Enc, max_tokens: 35, max_words: 50, itc: false }
    }
}

impl FilterSettings {
    /// Rejects settings that cannot score anything or would keep everything by accident.
    pub fn validate(&self) -> Result<(), ModelError> {
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(ModelError::Settings(format!("threshold {} is not a probability in [0, 1]", self.threshold)));
        }

        // [CLS] and [SEP] take two tokens, and the tokenizer's truncation needs room for them.
        if self.max_tokens < 2 {
            return Err(ModelError::Settings(format!("max_tokens {} leaves no room for [CLS] and [SEP], expected at least 2", self.max_tokens)));
        }

        if self.max_words == 0 {
            return Err(ModelError::Settings("max_words 0 keeps no words, expected at least 1".into()));
        }
        Ok(())
    }
}

/// Cleans a caption as BLIP's `pre_caption` does: lowercase; each of `. ! " ( ) * # : ; ~`
/// becomes a space; every run of two or more whitespace characters becomes one space; trailing
/// newlines, then leading and trailing spaces, are stripped; at most `max_words`
/// space-separated words are kept.
///
/// A lone tab or newline between words stays, because BLIP's `\s{2,}` pattern leaves it. The
/// tokenizer still splits on it, but it does not separate words for `max_words`.
///
/// NOTE: `tests/fixtures/generate.py` cleans with `\s+` and a full strip instead. The two agree
/// on the fixture texts and differ only on lone or leading non-space whitespace.
pub fn clean_caption(text: &str, max_words: usize) -> String {
    let spaced: String = text.to_lowercase().chars().map(|c| if is_removed_punctuation(c) { ' ' } else { c }).collect();

    let collapsed = collapse_whitespace_runs(&spaced);
    let stripped = collapsed.trim_end_matches('\n').trim_matches(' ');

    let words: Vec<&str> = stripped.split(' ').collect();
    if words.len() > max_words {
        words[..max_words].join(" ")
    } else {
        stripped.to_string()
    }
}

fn is_removed_punctuation(c: char) -> bool {
    matches!(c, '.' | '!' | '"' | '(' | ')' | '*' | '#' | ':' | ';' | '~')
}

/// Whitespace as Python's `\s` matches it in a `str` pattern: Rust's Unicode `White_Space`
/// plus the four ASCII separators U+001C..U+001F, which Python counts as spaces.
fn is_python_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Replaces each run of two or more whitespace characters by one space. A lone whitespace
/// character is kept unchanged.
fn collapse_whitespace_runs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();

    for c in text.chars() {
        if is_python_whitespace(c) {
            run.push(c);
            continue;
        }
        flush_run(&mut out, &mut run);
        out.push(c);
    }

    flush_run(&mut out, &mut run);
    out
}

fn flush_run(out: &mut String, run: &mut String) {
    if run.chars().nth(1).is_some() {
        out.push(' ');
    } else {
        out.push_str(run);
    }
    run.clear();
}

/// Cleaned captions and their token ids, as the tokenizer returns them (`[CLS]` first,
/// `[SEP]` last, unpadded).
#[derive(Debug, Clone, PartialEq)]
pub struct TextBatch {
    /// Captions after [`clean_caption`].
    pub cleaned: Vec<String>,
    /// Token ids per caption.
    pub ids: Vec<Vec<u32>>,
}

/// Token ids and 0/1 attention mask of a batch padded to its longest row, row-major
/// `[rows, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PaddedIds {
    /// Token ids, `pad_id` after each row's end.
    pub ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub mask: Vec<u32>,
    /// Number of captions.
    pub rows: usize,
    /// Length of the longest caption in tokens.
    pub width: usize,
}

impl TextBatch {
    /// Pads every row on the right with `pad_id` to the longest row's length.
    pub fn padded(&self, pad_id: u32) -> PaddedIds {
        let rows = self.ids.len();
        let width = self.ids.iter().map(Vec::len).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);

        for row in &self.ids {
            let padding = width - row.len();
            ids.extend(row.iter().copied().chain(std::iter::repeat_n(pad_id, padding)));
            mask.extend(std::iter::repeat_n(1, row.len()).chain(std::iter::repeat_n(0, padding)));
        }

        PaddedIds { ids, mask, rows, width }
    }
}

impl PaddedIds {
    /// Returns the ids with the first token of every row replaced by `token`.
    pub fn with_first_token(&self, token: u32) -> Vec<u32> {
        let mut ids = self.ids.clone();
        for row in ids.chunks_mut(self.width.max(1)) {
            row[0] = token;
        }
        ids
    }
}

/// The scores of one caption against its image.
#[derive(Debug, Clone, PartialEq)]
pub struct TextScore {
    /// The caption after [`clean_caption`], which is what was scored.
    pub cleaned: String,
    /// ITM P(match).
    pub itm: f32,
    /// ITC cosine, when [`FilterSettings::itc`] is set.
    pub itc: Option<f32>,
    /// Whether `itm` reaches [`FilterSettings::threshold`].
    pub keep: bool,
}

/// A loaded ITM model with its tokenizer and filter settings.
pub struct Filter {
    model: ItmModel,
    tokenizer: Tokenizer,
    tokenizer_path: PathBuf,
    settings: FilterSettings,
    itm_first_token: Option<u32>,
    device: Device,
    dtype: DType,
}

impl Filter {
    /// Loads a `BlipForImageTextRetrieval` checkpoint. A checkpoint without the ITM head
    /// (e.g. a captioner) fails with an error naming `itm_head.weight`.
    pub fn load(files: &CheckpointFiles, settings: FilterSettings, device: &Device, dtype: DType) -> Result<Self, ModelError> {
        settings.validate()?;

        let config = read_config(&files.config)?;
        check_token_limit(&settings, config.text_config.max_position_embeddings)?;

        let vb = var_builder(&files.weights, dtype, device)?;
        let model = ItmModel::load(config, vb).map_err(|source| ModelError::Load { path: files.weights[0].clone(), source })?;

        let tokenizer = load_tokenizer(files, settings.max_tokens)?;
        let itm_first_token = first_token_id(&tokenizer, &model, settings.first_token)
            .map_err(|message| ModelError::Tokenizer { path: files.tokenizer.clone(), message })?;

        let tokenizer_path = files.tokenizer.clone();
        Ok(Self { model, tokenizer, tokenizer_path, settings, itm_first_token, device: device.clone(), dtype })
    }

    /// Returns the settings the filter was loaded with.
    pub fn settings(&self) -> &FilterSettings {
        &self.settings
    }

    /// Returns the device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Side length of the square input images the vision encoder expects.
    pub fn image_size(&self) -> usize {
        self.model.config.vision_config.image_size
    }

    /// Runs the vision encoder on pixel values `[images, 3, size, size]`, returning
    /// `[images, tokens, width]`.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor, ModelError> {
        Ok(self.model.encode_images(&pixel_values.to_dtype(self.dtype)?)?)
    }

    /// Cleans and tokenises `texts`, truncating each to `max_tokens`.
    pub fn tokenize<S: AsRef<str>>(&self, texts: &[S]) -> Result<TextBatch, ModelError> {
        let cleaned: Vec<String> = texts.iter().map(|t| clean_caption(t.as_ref(), self.settings.max_words)).collect();

        let ids = cleaned
            .iter()
            .map(|text| self.tokenizer.encode(text.as_str(), true).map(|e| e.get_ids().to_vec()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Tokenizer { path: self.tokenizer_path.clone(), message: e.to_string() })?;

        Ok(TextBatch { cleaned, ids })
    }

    /// Scores `texts[i]` (any number of captions, none included) against image `i` of the
    /// pixel values `[images, 3, size, size]`.
    pub fn score_pixels<S: AsRef<str>>(&self, pixel_values: &Tensor, texts: &[Vec<S>]) -> Result<Vec<Vec<TextScore>>, ModelError> {
        check_lists(pixel_values.dim(0)?, texts)?;

        // Images without captions need no vision pass.
        if texts.iter().all(Vec::is_empty) {
            return Ok(texts.iter().map(|_| Vec::new()).collect());
        }

        let image_embeds = self.encode_images(pixel_values)?;
        self.score(&image_embeds, texts)
    }

    /// Scores `texts[i]` against image `i` of already encoded images `[images, tokens, width]`.
    pub fn score<S: AsRef<str>>(&self, image_embeds: &Tensor, texts: &[Vec<S>]) -> Result<Vec<Vec<TextScore>>, ModelError> {
        check_lists(image_embeds.dim(0)?, texts)?;

        let (flat, image_index) = flatten(texts);
        if flat.is_empty() {
            return Ok(texts.iter().map(|_| Vec::new()).collect());
        }

        let batch = self.tokenize(&flat)?;
        let (itm, itc) = self.score_rows(image_embeds, &batch, &image_index)?;

        Ok(self.regroup(texts, batch.cleaned, itm, itc))
    }

    /// Computes ITM probabilities, and ITC cosines when requested, for tokenised rows.
    ///
    /// ITC always uses the tokenizer's own `[CLS]`, because BLIP's code puts `[ENC]` only into
    /// the text that cross-attends to the image. Its text-only features keep `[CLS]`.
    fn score_rows(&self, image_embeds: &Tensor, batch: &TextBatch, image_index: &[u32]) -> Result<(Vec<f32>, Option<Vec<f32>>), ModelError> {
        let padded = batch.padded(self.model.config.text_config.pad_token_id);
        let shape = (padded.rows, padded.width);
        let mask = Tensor::from_slice(&padded.mask, shape, &self.device)?;

        let itm_ids = match self.itm_first_token {
            Some(token) => padded.with_first_token(token),
            None => padded.ids.clone(),
        };
        let itm_ids = Tensor::from_vec(itm_ids, shape, &self.device)?;
        let itm = self.model.itm_probabilities(image_embeds, &itm_ids, &mask, image_index)?;

        let itc = if self.settings.itc {
            let ids = Tensor::from_slice(&padded.ids, shape, &self.device)?;
            Some(self.model.itc_cosines(image_embeds, &ids, &mask, image_index)?)
        } else {
            None
        };
        Ok((itm, itc))
    }

    /// Splits flat row scores back into one list per image.
    fn regroup<S>(&self, texts: &[Vec<S>], cleaned: Vec<String>, itm: Vec<f32>, itc: Option<Vec<f32>>) -> Vec<Vec<TextScore>> {
        let mut rows = cleaned.into_iter().zip(itm).enumerate().map(|(row, (cleaned, itm))| TextScore {
            cleaned,
            itm,
            itc: itc.as_ref().map(|values| values[row]),
            keep: itm >= self.settings.threshold,
        });

        texts.iter().map(|captions| rows.by_ref().take(captions.len()).collect()).collect()
    }
}

/// Rejects caption lists that do not pair one to one with the images, because the scores
/// would otherwise be attributed to the wrong images.
fn check_lists<S>(images: usize, texts: &[Vec<S>]) -> Result<(), ModelError> {
    if texts.len() == images {
        return Ok(());
    }

    let message = format!("invalid caption lists: {} lists for {images} images, expected one per image", texts.len());
    Err(ModelError::Compute(candle_core::Error::Msg(message)))
}

/// Lists all captions image-major, with the image each belongs to.
fn flatten<S: AsRef<str>>(texts: &[Vec<S>]) -> (Vec<&str>, Vec<u32>) {
    let mut flat = Vec::new();
    let mut image_index = Vec::new();

    for (image, captions) in texts.iter().enumerate() {
        flat.extend(captions.iter().map(AsRef::as_ref));
        image_index.extend(std::iter::repeat_n(image as u32, captions.len()));
    }
    (flat, image_index)
}

/// Rejects a token limit beyond the position embeddings, because longer inputs would fail
/// deep inside the embedding lookup.
fn check_token_limit(settings: &FilterSettings, max_positions: usize) -> Result<(), ModelError> {
    if settings.max_tokens > max_positions {
        return Err(ModelError::Settings(format!(
            "max_tokens {} exceeds the model's {max_positions} position embeddings",
            settings.max_tokens
        )));
    }
    Ok(())
}

/// Loads the tokenizer to truncate to `max_tokens` (special tokens included) without padding.
/// [`TextBatch::padded`] pads per batch instead.
fn load_tokenizer(files: &CheckpointFiles, max_tokens: usize) -> Result<Tokenizer, ModelError> {
    let error = |message: String| ModelError::Tokenizer { path: files.tokenizer.clone(), message };
    let mut tokenizer = Tokenizer::from_file(&files.tokenizer).map_err(|e| error(e.to_string()))?;

    let truncation = TruncationParams { max_length: max_tokens, ..Default::default() };
    tokenizer.with_truncation(Some(truncation)).map_err(|e| error(e.to_string()))?;
    tokenizer.with_padding(None);
    Ok(tokenizer)
}

/// Returns the id that replaces the first token of ITM inputs, or `None` to keep `[CLS]`.
///
/// BLIP's tokenizer appends `[DEC]` and then `[ENC]` to BERT's vocabulary. A tokenizer file
/// without `[ENC]` but with exactly that layout (`[DEC]` is the second-to-last embedding row)
/// gets the last row. Any other layout is an error rather than a guess.
///
/// NOTE: that fallback is inferred from the vocabulary layout, not read from a hub tokenizer.
fn first_token_id(tokenizer: &Tokenizer, model: &ItmModel, first_token: FirstToken) -> Result<Option<u32>, String> {
    if first_token == FirstToken::Cls {
        return Ok(None);
    }

    if let Some(id) = tokenizer.token_to_id(ENC_TOKEN) {
        return Ok(Some(id));
    }

    let text = &model.config.text_config;
    if text.bos_token_id as usize + 2 == text.vocab_size {
        return Ok(Some(text.bos_token_id + 1));
    }
    Err(format!("missing {ENC_TOKEN} token, and the vocabulary does not follow BLIP's layout: set first_token = \"cls\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_caption_replaces_punctuation_and_lowercases() {
        assert_eq!(clean_caption("a. b! c\" (d) *e# f: g; h~", 50), "a b c d e f g h");
        assert_eq!(clean_caption("A Dog, On The GRASS", 50), "a dog, on the grass");
    }

    #[test]
    fn clean_caption_keeps_lone_tabs() {
        assert_eq!(clean_caption("a  \t dog\n\n", 50), "a dog");
        assert_eq!(clean_caption("a\tdog", 50), "a\tdog");
        assert_eq!(clean_caption("  ...dog...  ", 50), "dog");
    }

    #[test]
    fn clean_caption_strips_trailing_newlines() {
        assert_eq!(clean_caption("dog\n", 50), "dog");
        assert_eq!(clean_caption("\ndog", 50), "\ndog");
    }

    #[test]
    fn clean_caption_counts_python_separators_as_whitespace() {
        assert_eq!(clean_caption("a\u{1c}\u{1d}b", 50), "a b");
        assert_eq!(clean_caption("a\u{3000}\u{3000}b", 50), "a b");
    }

    #[test]
    fn clean_caption_keeps_at_most_max_words() {
        assert_eq!(clean_caption("one two three four", 2), "one two");
        assert_eq!(clean_caption("one two", 2), "one two");
        assert_eq!(clean_caption("", 2), "");
    }

    #[test]
    fn clean_caption_handles_non_ascii() {
        assert_eq!(clean_caption("Ünïcödé café 東京 ☕", 50), "ünïcödé café 東京 ☕");
        assert_eq!(clean_caption("ΟΔΟΣ.", 50), "οδος");
    }

    #[test]
    fn padded_fills_right_and_replaces_first_token() {
        let batch = TextBatch { cleaned: vec![String::new(), "x".into()], ids: vec![vec![101, 102], vec![101, 7, 8, 102]] };
        let padded = batch.padded(0);

        assert_eq!((padded.rows, padded.width), (2, 4));
        assert_eq!(padded.ids, vec![101, 102, 0, 0, 101, 7, 8, 102]);
        assert_eq!(padded.mask, vec![1, 1, 0, 0, 1, 1, 1, 1]);
        assert_eq!(padded.with_first_token(30523), vec![30523, 102, 0, 0, 30523, 7, 8, 102]);
    }

    #[test]
    fn flatten_is_image_major() {
        let texts = vec![vec!["a", "b"], vec![], vec!["c"]];
        let (flat, index) = flatten(&texts);

        assert_eq!(flat, vec!["a", "b", "c"]);
        assert_eq!(index, vec![0, 0, 2]);
    }

    #[test]
    fn settings_default_and_reject_unknown_fields() {
        let settings: FilterSettings = serde_json::from_str("{}").unwrap();
        assert_eq!(settings, FilterSettings::default());
        assert_eq!(settings.first_token, FirstToken::Enc);
        assert_eq!((settings.threshold, settings.max_tokens, settings.max_words, settings.itc), (0.5, 35, 50, false));

        let cls: FilterSettings = serde_json::from_str(r#"{"first_token": "cls", "itc": true}"#).unwrap();
        assert_eq!((cls.first_token, cls.itc), (FirstToken::Cls, true));

        assert!(serde_json::from_str::<FilterSettings>(r#"{"treshold": 0.4}"#).is_err());
    }

    #[test]
    fn settings_validation_rejects_unusable_values() {
        let bad = [
            FilterSettings { threshold: 1.5, ..Default::default() },
            FilterSettings { threshold: f32::NAN, ..Default::default() },
            FilterSettings { max_tokens: 1, ..Default::default() },
            FilterSettings { max_words: 0, ..Default::default() },
        ];
        for settings in bad {
            assert!(settings.validate().is_err(), "{settings:?}");
        }
        assert!(FilterSettings::default().validate().is_ok());
    }
}
