//! Worker computation for capfilt: image decoding and preprocessing, and BLIP captioning on
//! candle. This crate does no network or storage I/O.

pub mod allocator;
pub mod blip;
pub mod caption;
pub mod error;
pub mod filter;
pub mod image;

pub use caption::{Caption, CaptionSettings, Captioner, Decoding};
pub use error::ModelError;
