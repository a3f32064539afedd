//! BLIP's BERT text model: the caption decoder (causal, with a key/value cache) and the
//! bidirectional encoder used by the image-text matching head share these layers.
//!
//! Cross-attention keys and values over the image tokens are computed once per image
//! ([`TextModel::image_keys_values`]) and reused at every decoding step. Several text rows
//! (beams, samples) may share one image: rows are laid out image-major, and their queries are
//! stacked against the image's keys, so the image tensors are never copied per row.

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, Embedding, LayerNorm, VarBuilder};

use super::config::TextConfig;
use super::parallel::{add_residual, Dense};

/// Keys and values of one layer, shaped `[rows or images, heads, tokens, head_dim]`.
#[derive(Clone)]
pub struct KeyValue {
    pub key: Tensor,
    pub value: Tensor,
}

impl KeyValue {
    fn select_rows(&self, rows: &Tensor) -> Result<Self> {
        Ok(Self { key: self.key.index_select(rows, 0)?, value: self.value.index_select(rows, 0)? })
    }
}

/// Cross-attention keys and values of every layer for a batch of images.
#[derive(Clone)]
pub struct ImageKeyValues {
    pub layers: Vec<KeyValue>,
}

impl ImageKeyValues {
    /// Keeps only the images at `indices`, in that order.
    pub fn select_images(&self, indices: &Tensor) -> Result<Self> {
        let layers = self.layers.iter().map(|kv| kv.select_rows(indices)).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    pub fn images(&self) -> usize {
        self.layers.first().map(|kv| kv.key.dim(0).unwrap_or(0)).unwrap_or(0)
    }
}

/// Self-attention keys and values of every layer for the rows being decoded.
#[derive(Clone, Default)]
pub struct SelfCache {
    layers: Vec<Option<KeyValue>>,
}

impl SelfCache {
    pub fn new(layers: usize) -> Self {
        Self { layers: vec![None; layers] }
    }

    /// Number of tokens already cached.
    pub fn len(&self) -> usize {
        match self.layers.first() {
            Some(Some(kv)) => kv.key.dim(2).unwrap_or(0),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reorders (and may repeat or drop) cached rows, e.g. after a beam search step.
    pub fn select_rows(&mut self, rows: &Tensor) -> Result<()> {
        for slot in self.layers.iter_mut() {
            if let Some(kv) = slot {
                *kv = kv.select_rows(rows)?;
            }
        }
        Ok(())
    }
}

/// Attention mode of a text forward pass.
pub enum AttentionMode<'a> {
    /// Causal decoding that appends to `cache`; cross-attends to images shared by `group` rows
    /// each. `positions` (`[rows, tokens]`) are the new tokens' position ids, and `key_mask`
    /// (`[rows, 1, 1, past + tokens]`, additive) hides left padding when rows have prompts of
    /// different lengths.
    Decoder {
        cache: &'a mut SelfCache,
        image: &'a ImageKeyValues,
        group: usize,
        positions: &'a Tensor,
        key_mask: Option<&'a Tensor>,
    },
    /// Bidirectional encoding with an additive padding mask `[rows, 1, 1, tokens]`, optionally
    /// cross-attending to one image per row.
    Encoder { mask: &'a Tensor, image: Option<&'a ImageKeyValues> },
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
}

impl Embeddings {
    fn load(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            word_embeddings: embedding(cfg.vocab_size, cfg.hidden_size, vb.pp("word_embeddings"))?,
            position_embeddings: embedding(cfg.max_position_embeddings, cfg.hidden_size, vb.pp("position_embeddings"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    /// Embeds `input_ids` at `positions` (`[tokens]` shared by all rows, or `[rows, tokens]`).
    fn forward(&self, input_ids: &Tensor, positions: &Tensor) -> Result<Tensor> {
        let words = self.word_embeddings.forward(input_ids)?;
        let positions = self.position_embeddings.forward(positions)?;

        words.broadcast_add(&positions)?.apply(&self.layer_norm)
    }
}

struct Projections {
    query: Dense,
    key: Dense,
    value: Dense,
    heads: usize,
    head_dim: usize,
}

impl Projections {
    fn load(cfg: &TextConfig, key_width: usize, vb: VarBuilder) -> Result<Self> {
        let width = cfg.hidden_size;
        Ok(Self {
            query: Dense::load(width, width, vb.pp("query"))?,
            key: Dense::load(key_width, width, vb.pp("key"))?,
            value: Dense::load(key_width, width, vb.pp("value"))?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `[rows, tokens, width]` to `[rows, heads, tokens, head_dim]`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (rows, tokens, _) = xs.dims3()?;
        xs.reshape((rows, tokens, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    fn merge_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (rows, _, tokens, _) = xs.dims4()?;
        xs.transpose(1, 2)?.reshape((rows, tokens, self.heads * self.head_dim))
    }

    fn keys_values(&self, xs: &Tensor) -> Result<KeyValue> {
        Ok(KeyValue { key: self.split_heads(&xs.apply(&self.key)?)?, value: self.split_heads(&xs.apply(&self.value)?)? })
    }

    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }
}

fn attend(query: &Tensor, kv: &KeyValue, scale: f64, mask: Option<&Tensor>) -> Result<Tensor> {
    let scores = (query.matmul(&kv.key.t()?)? * scale)?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(&kv.value)
}

/// Additive causal mask `[new, past + new]` for `new` query tokens after `past` cached ones.
fn causal_mask(past: usize, new: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..new)
        .flat_map(|i| (0..past + new).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (new, past + new), device)
}

struct SelfAttention {
    projections: Projections,
    output: Dense,
    layer_norm: LayerNorm,
}

impl SelfAttention {
    fn load(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            projections: Projections::load(cfg, cfg.hidden_size, vb.pp("self"))?,
            output: Dense::load(cfg.hidden_size, cfg.hidden_size, vb.pp("output.dense"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    /// With a cache, attends causally and `mask` (if any) hides padded keys; without one, `mask`
    /// is the encoder's padding mask.
    fn forward(&self, xs: &Tensor, cache: Option<&mut Option<KeyValue>>, mask: Option<&Tensor>) -> Result<Tensor> {
        let p = &self.projections;
        let query = p.split_heads(&xs.apply(&p.query)?)?;
        let new = p.keys_values(xs)?;

        let context = match cache {
            Some(slot) => {
                let past = slot.as_ref().map(|kv| kv.key.dim(2)).transpose()?.unwrap_or(0);
                let kv = match slot.take() {
                    Some(old) => KeyValue {
                        key: Tensor::cat(&[&old.key, &new.key], 2)?,
                        value: Tensor::cat(&[&old.value, &new.value], 2)?,
                    },
                    None => new,
                };
                let tokens = xs.dim(1)?;
                let causal = if tokens > 1 { Some(causal_mask(past, tokens, xs.device())?) } else { None };
                let combined = match (causal, mask) {
                    (Some(causal), Some(keys)) => Some(keys.broadcast_add(&causal)?),
                    (Some(causal), None) => Some(causal),
                    (None, Some(keys)) => Some(keys.clone()),
                    (None, None) => None,
                };
                let context = attend(&query, &kv, p.scale(), combined.as_ref())?;
                *slot = Some(kv);
                context
            }
            None => attend(&query, &new, p.scale(), mask)?,
        };

        let out = p.merge_heads(&context)?.apply(&self.output)?;
        add_residual(out, xs)?.apply(&self.layer_norm)
    }
}

struct CrossAttention {
    projections: Projections,
    output: Dense,
    layer_norm: LayerNorm,
}

impl CrossAttention {
    fn load(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            projections: Projections::load(cfg, cfg.encoder_width(), vb.pp("self"))?,
            output: Dense::load(cfg.hidden_size, cfg.hidden_size, vb.pp("output.dense"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    /// Attends `xs` (`[images * group, tokens, width]`) to the image keys and values
    /// (`[images, heads, image_tokens, head_dim]`). The `group` rows of an image are stacked as
    /// extra queries, so the image tensors are read once.
    fn forward(&self, xs: &Tensor, image: &KeyValue, group: usize) -> Result<Tensor> {
        let p = &self.projections;
        let (rows, tokens, width) = xs.dims3()?;
        let images = rows / group;

        let query = xs
            .apply(&p.query)?
            .reshape((images, group, tokens, p.heads, p.head_dim))?
            .permute((0, 3, 1, 2, 4))?
            .reshape((images, p.heads, group * tokens, p.head_dim))?;
        let context = attend(&query.contiguous()?, image, p.scale(), None)?;
        let context = context
            .reshape((images, p.heads, group, tokens, p.head_dim))?
            .permute((0, 2, 3, 1, 4))?
            .reshape((rows, tokens, width))?;

        let out = context.apply(&self.output)?;
        add_residual(out, xs)?.apply(&self.layer_norm)
    }
}

struct Layer {
    attention: SelfAttention,
    cross_attention: CrossAttention,
    intermediate: Dense,
    output: Dense,
    layer_norm: LayerNorm,
}

impl Layer {
    fn load(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: SelfAttention::load(cfg, vb.pp("attention"))?,
            cross_attention: CrossAttention::load(cfg, vb.pp("crossattention"))?,
            intermediate: Dense::load(cfg.hidden_size, cfg.intermediate_size, vb.pp("intermediate.dense"))?
                .with_activation(cfg.hidden_act),
            output: Dense::load(cfg.intermediate_size, cfg.hidden_size, vb.pp("output.dense"))?,
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    fn feed_forward(&self, xs: &Tensor) -> Result<Tensor> {
        let hidden = xs.apply(&self.intermediate)?.apply(&self.output)?;
        add_residual(hidden, xs)?.apply(&self.layer_norm)
    }
}

/// The BERT body (`bert.*` in the decoder, `text_encoder.*` in the ITM model).
pub struct TextModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl TextModel {
    pub fn load(cfg: &TextConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(cfg, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings: Embeddings::load(cfg, vb.pp("embeddings"))?, layers })
    }

    /// Returns the word embedding matrix `[vocab, width]`, which the LM head's projection is tied to.
    pub fn word_embeddings(&self) -> &Tensor {
        self.embeddings.word_embeddings.embeddings()
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Projects image tokens `[images, image_tokens, width]` to every layer's cross-attention
    /// keys and values, once per image.
    pub fn image_keys_values(&self, image_embeds: &Tensor) -> Result<ImageKeyValues> {
        let layers = self
            .layers
            .iter()
            .map(|layer| layer.cross_attention.projections.keys_values(image_embeds))
            .collect::<Result<_>>()?;
        Ok(ImageKeyValues { layers })
    }

    /// Runs the text layers over `input_ids` `[rows, tokens]`, returning `[rows, tokens, width]`.
    pub fn forward(&self, input_ids: &Tensor, mode: AttentionMode) -> Result<Tensor> {
        match mode {
            AttentionMode::Decoder { cache, image, group, positions, key_mask } => {
                let mut xs = self.embeddings.forward(input_ids, positions)?;
                for (i, layer) in self.layers.iter().enumerate() {
                    xs = layer.attention.forward(&xs, Some(&mut cache.layers[i]), key_mask)?;
                    xs = layer.cross_attention.forward(&xs, &image.layers[i], group)?;
                    xs = layer.feed_forward(&xs)?;
                }
                Ok(xs)
            }
            AttentionMode::Encoder { mask, image } => {
                let tokens = input_ids.dim(1)?;
                let positions = Tensor::arange(0u32, tokens as u32, input_ids.device())?;
                let mut xs = self.embeddings.forward(input_ids, &positions)?;
                for (i, layer) in self.layers.iter().enumerate() {
                    xs = layer.attention.forward(&xs, None, Some(mask))?;
                    if let Some(image) = image {
                        xs = layer.cross_attention.forward(&xs, &image.layers[i], 1)?;
                    }
                    xs = layer.feed_forward(&xs)?;
                }
                Ok(xs)
            }
        }
    }
}

/// Additive attention mask `[rows, 1, 1, tokens]` from a 0/1 padding mask `[rows, tokens]`.
pub fn padding_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let (rows, tokens) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?;
    let mask = ((keep - 1.0)? * f64::from(f32::MAX))?;
    mask.reshape((rows, 1, 1, tokens))
}

/// The language-model head: transform (dense, activation, layer norm) and the vocabulary
/// projection, whose weight is tied to the word embeddings.
pub struct LmHead {
    dense: Dense,
    layer_norm: LayerNorm,
    decoder: Dense,
}

impl LmHead {
    /// Loads `cls.predictions.*`. `word_embeddings` replaces the decoder weight when the
    /// checkpoint leaves the tied tensor out, as transformers' `save_pretrained` does.
    pub fn load(cfg: &TextConfig, vb: VarBuilder, word_embeddings: Tensor) -> Result<Self> {
        let vb = vb.pp("predictions");
        let decoder_weight = if vb.contains_tensor("decoder.weight") {
            vb.get((cfg.vocab_size, cfg.hidden_size), "decoder.weight")?
        } else {
            word_embeddings
        };
        let decoder_bias = if vb.contains_tensor("decoder.bias") {
            vb.get(cfg.vocab_size, "decoder.bias")?
        } else {
            vb.get(cfg.vocab_size, "bias")?
        };
        Ok(Self {
            dense: Dense::load(cfg.hidden_size, cfg.hidden_size, vb.pp("transform.dense"))?.with_activation(cfg.hidden_act),
            layer_norm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("transform.LayerNorm"))?,
            // A transposed copy of the tied weight (vocabulary × width floats, 94 MB for
            // BLIP-large), so that gemm need not repack the largest matrix at every step.
            decoder: Dense::new(&decoder_weight, decoder_bias)?,
        })
    }

    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        hidden.apply(&self.dense)?.apply(&self.layer_norm)?.apply(&self.decoder)
    }
}

/// Selects the last position of `[rows, tokens, width]` as `[rows, width]`.
pub fn last_token(hidden: &Tensor) -> Result<Tensor> {
    let tokens = hidden.dim(1)?;
    hidden.narrow(1, tokens - 1, 1)?.squeeze(1)
}
