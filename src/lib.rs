//! capfilt: caption and filter web-scale image datasets with BLIP.
//!
//! The binary's runtime: configuration, downloads, the embedded pipeline and Parquet output.
//! Reading and sharding URL lists lives in `capfilt-coordinator`; image preprocessing and the
//! model live in `capfilt-workers`.

pub mod cli;
pub mod config;
pub mod distributed;
pub mod export;
pub mod fetch;
pub mod inputs;
pub mod inspect;
pub mod labelled;
pub mod log_limit;
pub mod metrics;
pub mod model_source;
pub mod net_guard;
pub mod pipeline;
pub mod progress;
pub mod redact;
pub mod report;
pub mod s3;
pub mod sink;
pub mod status;
pub mod storage;
