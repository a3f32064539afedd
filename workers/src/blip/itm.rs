//! `BlipForImageTextRetrieval`: the image-text matching (ITM) head and the image-text
//! contrastive (ITC) projections over BLIP's vision and text encoders.
//!
//! Texts are scored against images by index: text row `r` is paired with image
//! `image_index[r]`. Each image's cross-attention keys and values are projected once and then
//! gathered per text row, so several captions of one image do not repeat the projection.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

use super::config::BlipConfig;
use super::text::{padding_mask, AttentionMode, ImageKeyValues, TextModel};
use super::vision::VisionModel;

/// The tensor whose absence marks a checkpoint as not being a retrieval model. It is loaded
/// first so that, for instance, a captioning checkpoint fails with this name rather than with
/// some text encoder tensor deep inside the model.
pub const ITM_HEAD: &str = "itm_head";

/// Smallest norm [`normalize`] divides by, as `torch.nn.functional.normalize` does, so a zero
/// vector maps to zero instead of NaN.
const NORM_EPS: f64 = 1e-12;

/// BLIP's retrieval model: ViT image encoder, BERT text encoder with cross-attention, the
/// two-way ITM head and the ITC projections into the shared embedding space.
pub struct ItmModel {
    vision: VisionModel,
    text: TextModel,
    itm_head: Linear,
    vision_proj: Linear,
    text_proj: Linear,
    /// The checkpoint's `config.json`.
    pub config: BlipConfig,
}

impl ItmModel {
    /// Builds the model from `vision_model.*`, `text_encoder.*`, `itm_head`, `vision_proj` and
    /// `text_proj` tensors. A missing tensor is an error naming it. Nothing is randomly
    /// initialised, because random head weights would give plausible but meaningless scores.
    pub fn load(config: BlipConfig, vb: VarBuilder) -> Result<Self> {
        let text_width = config.text_config.hidden_size;
        let joint_width = config.image_text_hidden_size;

        let itm_head = linear(text_width, 2, vb.pp(ITM_HEAD))
            .map_err(|e| e.context("not an image-text matching checkpoint (BlipForImageTextRetrieval)"))?;
        let vision_proj = linear(config.vision_config.hidden_size, joint_width, vb.pp("vision_proj"))?;
        let text_proj = linear(text_width, joint_width, vb.pp("text_proj"))?;

        let vision = VisionModel::load(&config.vision_config, vb.pp("vision_model"))?;
        let text = TextModel::load(&config.text_config, vb.pp("text_encoder"))?;

        Ok(Self { vision, text, itm_head, vision_proj, text_proj, config })
    }

    /// Encodes pixel values `[images, 3, size, size]` into image tokens
    /// `[images, 1 + patches, width]`.
    pub fn encode_images(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.vision.forward(pixel_values)
    }

    /// Computes ITM logits `[rows, 2]` (not matched, matched) for text rows `input_ids` `[rows, tokens]`
    /// with 0/1 `attention_mask` `[rows, tokens]`, row `r` against image `image_index[r]` of
    /// `image_embeds`. The first token is used as given: `[CLS]` as transformers' tokenizer
    /// produces it, or `[ENC]` as BLIP's own training code puts there.
    pub fn itm_logits(&self, image_embeds: &Tensor, input_ids: &Tensor, attention_mask: &Tensor, image_index: &[u32]) -> Result<Tensor> {
        check_rows(input_ids, image_index, image_embeds.dim(0)?)?;

        let image = self.row_images(image_embeds, image_index)?;
        let mask = self.encoder_mask(attention_mask)?;
        let hidden = self.text.forward(input_ids, AttentionMode::Encoder { mask: &mask, image: Some(&image) })?;

        first_token(&hidden)?.apply(&self.itm_head)
    }

    /// Computes P(match) per text row as `softmax(itm_logits)[1]` in f32.
    pub fn itm_probabilities(&self, image_embeds: &Tensor, input_ids: &Tensor, attention_mask: &Tensor, image_index: &[u32]) -> Result<Vec<f32>> {
        let logits = self.itm_logits(image_embeds, input_ids, attention_mask, image_index)?;

        let probabilities = candle_nn::ops::softmax_last_dim(&logits.to_dtype(DType::F32)?)?;
        probabilities.narrow(1, 1, 1)?.flatten_all()?.to_vec1()
    }

    /// Computes the ITC cosine per text row: L2-normalised `vision_proj(image [CLS] token)` against
    /// L2-normalised `text_proj(first text token)`. The text runs through the encoder without
    /// cross-attention, as transformers does with `use_itm_head=False`. No temperature is
    /// applied.
    pub fn itc_cosines(&self, image_embeds: &Tensor, input_ids: &Tensor, attention_mask: &Tensor, image_index: &[u32]) -> Result<Vec<f32>> {
        check_rows(input_ids, image_index, image_embeds.dim(0)?)?;

        let image_features = self.image_features(image_embeds)?;
        let image_features = image_features.index_select(&index_tensor(image_index, image_embeds)?, 0)?;
        let text_features = self.text_features(input_ids, attention_mask)?;

        let cosines = (image_features * text_features)?.sum(D::Minus1)?;
        cosines.to_dtype(DType::F32)?.to_vec1()
    }

    /// Projects image class tokens to normalised ITC embeddings `[images, image_text_hidden_size]`.
    pub fn image_features(&self, image_embeds: &Tensor) -> Result<Tensor> {
        normalize(&first_token(image_embeds)?.apply(&self.vision_proj)?)
    }

    /// Encodes text without images into normalised ITC embeddings
    /// `[rows, image_text_hidden_size]`.
    pub fn text_features(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let mask = self.encoder_mask(attention_mask)?;
        let hidden = self.text.forward(input_ids, AttentionMode::Encoder { mask: &mask, image: None })?;

        normalize(&first_token(&hidden)?.apply(&self.text_proj)?)
    }

    /// Builds the additive padding mask in the weights' dtype, because attention scores in f16
    /// or bf16 cannot be added to an f32 mask.
    fn encoder_mask(&self, attention_mask: &Tensor) -> Result<Tensor> {
        padding_mask(attention_mask)?.to_dtype(self.text.word_embeddings().dtype())
    }

    /// Returns the cross-attention keys and values for each text row. They are projected once
    /// per image and then gathered with `index_select`. When the rows are the images in order
    /// (one text each), nothing is copied.
    ///
    /// NOTE: the gathered copies take `2 * layers * image_tokens * width` values per text row
    /// (about 42 MB in f32 for a 12-layer, 768-wide text encoder at 577 image tokens), so
    /// callers should bound the rows per call. Sharing one image's keys among its rows, as
    /// the caption decoder does with `group`, would need a group in `AttentionMode::Encoder`.
    fn row_images(&self, image_embeds: &Tensor, image_index: &[u32]) -> Result<ImageKeyValues> {
        let per_image = self.text.image_keys_values(image_embeds)?;

        let identity = image_index.len() == per_image.images() && image_index.iter().enumerate().all(|(i, &image)| i as u32 == image);
        if identity {
            return Ok(per_image);
        }
        per_image.select_images(&index_tensor(image_index, image_embeds)?)
    }
}

/// Rejects mismatched row counts and out-of-range image indices up front. Otherwise candle
/// fails later with a shape error that does not say which argument was wrong.
fn check_rows(input_ids: &Tensor, image_index: &[u32], images: usize) -> Result<()> {
    let rows = input_ids.dim(0)?;
    if rows != image_index.len() {
        candle_core::bail!("invalid image_index: {} entries for {rows} text rows, expected one per row", image_index.len());
    }

    if let Some(&bad) = image_index.iter().find(|&&image| image as usize >= images) {
        candle_core::bail!("invalid image index {bad}: only {images} images were encoded");
    }
    Ok(())
}

fn index_tensor(image_index: &[u32], like: &Tensor) -> Result<Tensor> {
    Tensor::from_slice(image_index, image_index.len(), like.device())
}

/// Takes the first position of `[rows, tokens, width]` as `[rows, width]`. That is `[CLS]` or
/// `[ENC]` for text and the class token for images.
fn first_token(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

/// Divides each row by its L2 norm (at least [`NORM_EPS`]).
fn normalize(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(NORM_EPS)?;
    xs.broadcast_div(&norm)
}
