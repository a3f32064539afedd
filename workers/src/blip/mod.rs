//! BLIP on candle: the captioning model and its decoding strategies.

pub mod config;
pub mod itm;
pub mod model;
mod parallel;
pub mod search;
pub mod text;
pub mod vision;

pub use config::BlipConfig;
pub use model::{CaptionModel, CheckpointFiles};
pub use search::{BeamSettings, SearchLimits, Sequence, StopReason};
