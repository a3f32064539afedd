//! BLIP's ViT image encoder, with tensor names as transformers' `BlipVisionModel` stores them.

use candle_core::{Module, Result, Tensor, D};
use candle_nn::{conv2d, layer_norm, Conv2d, Conv2dConfig, LayerNorm, VarBuilder};

use super::config::VisionConfig;
use super::parallel::{add_residual, attention_per_head, softmax_last_dim, Dense};

struct Embeddings {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
}

impl Embeddings {
    fn load(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let conv_cfg = Conv2dConfig { stride: cfg.patch_size, ..Default::default() };
        let patches_per_side = cfg.image_size / cfg.patch_size;
        let positions = patches_per_side * patches_per_side + 1;
        Ok(Self {
            class_embedding: vb.get((1, 1, cfg.hidden_size), "class_embedding")?,
            patch_embedding: conv2d(3, cfg.hidden_size, cfg.patch_size, conv_cfg, vb.pp("patch_embedding"))?,
            position_embedding: vb.get((1, positions, cfg.hidden_size), "position_embedding")?,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let batch = pixel_values.dim(0)?;
        let patches = pixel_values.apply(&self.patch_embedding)?.flatten_from(2)?.transpose(1, 2)?;

        let width = self.class_embedding.dim(D::Minus1)?;
        let class = self.class_embedding.broadcast_as((batch, 1, width))?;
        let tokens = Tensor::cat(&[&class, &patches], 1)?;

        tokens.broadcast_add(&self.position_embedding)
    }
}

struct Attention {
    qkv: Dense,
    projection: Dense,
    heads: usize,
    scale: f64,
}

impl Attention {
    fn load(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let width = cfg.hidden_size;
        let head_dim = width / cfg.num_attention_heads;
        Ok(Self {
            qkv: Dense::load(width, 3 * width, vb.pp("qkv"))?,
            projection: Dense::load(width, width, vb.pp("projection"))?,
            heads: cfg.num_attention_heads,
            scale: 1.0 / (head_dim as f64).sqrt(),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (batch, tokens, width) = xs.dims3()?;
        let qkv = xs.apply(&self.qkv)?;
        if let Some(merged) = attention_per_head(&qkv, self.heads, self.scale as f32)? {
            return merged.apply(&self.projection);
        }

        let qkv = qkv
            .reshape((batch, tokens, 3, self.heads, width / self.heads))?
            .permute((2, 0, 3, 1, 4))?;
        // Scaling the query while it is copied out costs nothing extra and touches head_dim
        // values per token instead of one per token pair. With BLIP's head size of 64 the scale
        // is 1/8, a power of two, so the scores are bit for bit those of scaling after the product.
        let query = (qkv.get(0)? * self.scale)?;
        let key = qkv.get(1)?.contiguous()?;
        let value = qkv.get(2)?.contiguous()?;

        let scores = query.matmul(&key.t()?)?;
        let probs = softmax_last_dim(scores)?;

        probs
            .matmul(&value)?
            .transpose(1, 2)?
            .reshape((batch, tokens, width))?
            .apply(&self.projection)
    }
}

struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    fc1: Dense,
    fc2: Dense,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn load(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let width = cfg.hidden_size;
        Ok(Self {
            self_attn: Attention::load(cfg, vb.pp("self_attn"))?,
            layer_norm1: layer_norm(width, cfg.layer_norm_eps, vb.pp("layer_norm1"))?,
            fc1: Dense::load(width, cfg.intermediate_size, vb.pp("mlp.fc1"))?.with_activation(cfg.hidden_act),
            fc2: Dense::load(cfg.intermediate_size, width, vb.pp("mlp.fc2"))?,
            layer_norm2: layer_norm(width, cfg.layer_norm_eps, vb.pp("layer_norm2"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let attended = self.self_attn.forward(&xs.apply(&self.layer_norm1)?)?;
        let xs = add_residual(attended, xs)?;

        let mlp = xs.apply(&self.layer_norm2)?.apply(&self.fc1)?.apply(&self.fc2)?;
        add_residual(mlp, &xs)
    }
}

/// The image encoder: patch embedding, pre-norm transformer layers, final layer norm.
pub struct VisionModel {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
}

impl VisionModel {
    pub fn load(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::load(cfg, vb.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            embeddings: Embeddings::load(cfg, vb.pp("embeddings"))?,
            layers,
            post_layernorm: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
        })
    }
}

impl VisionModel {
    fn encode(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let mut xs = self.embeddings.forward(pixel_values)?;
        for layer in &self.layers {
            xs = layer.forward(&xs)?;
        }
        xs.apply(&self.post_layernorm)
    }
}

impl Module for VisionModel {
    /// Maps pixel values `[batch, 3, size, size]` to image tokens `[batch, 1 + patches, width]`.
    ///
    /// On the CPU the images go through one at a time. A single BLIP-large image keeps every
    /// intermediate under 32 MiB (the largest, its attention scores, is 16 × 577² floats, 21 MB),
    /// so glibc recycles the buffers from its heaps (see [`crate::allocator`]). Matrix products
    /// of 577 rows still keep every core busy. GPUs take the whole batch at once.
    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let images = pixel_values.dim(0)?;
        if !pixel_values.device().is_cpu() || images <= 1 {
            return self.encode(pixel_values);
        }

        let encoded = (0..images)
            .map(|image| self.encode(&pixel_values.narrow(0, image, 1)?))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&encoded, 0)
    }
}
