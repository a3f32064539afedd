//! Serde mirrors of the `config.json` that transformers writes for BLIP checkpoints.
//!
//! Defaults are transformers' `BlipVisionConfig` and `BlipTextConfig` defaults, because hub
//! configs omit fields that equal them.

use candle_nn::Activation;
use serde::Deserialize;

/// Vision transformer settings (`vision_config`).
#[derive(Debug, Clone, Deserialize)]
pub struct VisionConfig {
    #[serde(default = "defaults::vision_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::vision_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::vision_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::image_size")]
    pub image_size: usize,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::activation")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::vision_layer_norm_eps")]
    pub layer_norm_eps: f64,
}

/// BERT text model settings (`text_config`), shared by the caption decoder and the ITM encoder.
#[derive(Debug, Clone, Deserialize)]
pub struct TextConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::text_hidden_size")]
    pub hidden_size: usize,
    /// Width of the image tokens fed to cross-attention. Some hub configs omit it; it then
    /// equals the vision hidden size (see [`BlipConfig::from_json`]).
    pub encoder_hidden_size: Option<usize>,
    #[serde(default = "defaults::text_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::text_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::activation")]
    pub hidden_act: Activation,
    #[serde(default = "defaults::text_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::bos_token_id")]
    pub bos_token_id: u32,
    #[serde(default = "defaults::sep_token_id")]
    pub sep_token_id: u32,
    #[serde(default)]
    pub pad_token_id: u32,
}

/// A whole BLIP checkpoint's `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct BlipConfig {
    pub vision_config: VisionConfig,
    pub text_config: TextConfig,
    #[serde(default = "defaults::image_text_hidden_size")]
    pub image_text_hidden_size: usize,
    #[serde(default)]
    pub architectures: Vec<String>,
}

impl BlipConfig {
    /// Parses `config.json`, filling `encoder_hidden_size` from the vision width when absent.
    pub fn from_json(text: &str) -> serde_json::Result<Self> {
        let mut config: BlipConfig = serde_json::from_str(text)?;
        if config.text_config.encoder_hidden_size.is_none() {
            config.text_config.encoder_hidden_size = Some(config.vision_config.hidden_size);
        }
        Ok(config)
    }
}

impl TextConfig {
    pub fn encoder_width(&self) -> usize {
        self.encoder_hidden_size.unwrap_or(self.hidden_size)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

mod defaults {
    use candle_nn::Activation;

    pub fn vision_hidden_size() -> usize {
        768
    }
    pub fn vision_intermediate_size() -> usize {
        3072
    }
    pub fn vision_layers() -> usize {
        12
    }
    pub fn vision_heads() -> usize {
        12
    }
    pub fn image_size() -> usize {
        384
    }
    pub fn patch_size() -> usize {
        16
    }
    pub fn activation() -> Activation {
        Activation::Gelu
    }
    pub fn vision_layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn vocab_size() -> usize {
        30524
    }
    pub fn text_hidden_size() -> usize {
        768
    }
    pub fn text_intermediate_size() -> usize {
        3072
    }
    pub fn text_layers() -> usize {
        12
    }
    pub fn text_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn text_layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn bos_token_id() -> u32 {
        30522
    }
    pub fn sep_token_id() -> u32 {
        102
    }
    pub fn image_text_hidden_size() -> usize {
        256
    }
}
