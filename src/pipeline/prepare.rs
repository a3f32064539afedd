//! Turning a row's URL into model input: download, then decode and preprocess on a CPU pool off
//! the async runtime.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;

use capfilt_workers::image::{sniff_format, DecodeLimits, PrepareError, PreprocessConfig, Preprocessor, Sniffed};
use sha2::{Digest, Sha256};

use crate::fetch::{locate, Fetcher};
use crate::status::RowStatus;

/// A row's image, ready for the model.
pub struct PreparedImage {
    pub pixels: Vec<f32>,
    pub info: ImageInfo,
}

/// Facts about a downloaded image stored in the output row.
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    pub format: String,
    pub sha256: String,
}

/// Reason a row produced no model input.
#[derive(Debug, Clone)]
pub struct RowFailure {
    pub status: RowStatus,
    pub message: String,
    /// Set when the bytes were downloaded before the failure.
    pub info: Option<ImageInfo>,
}

/// Everything needed to prepare images, shared by all download tasks.
pub struct Preparer {
    pub fetcher: Fetcher,
    pub limits: DecodeLimits,
    pub preprocess: PreprocessConfig,
    /// Smallest side a JPEG may be decoded at (DCT scaling); `None` decodes in full.
    pub jpeg_min_side: Option<u32>,
    pub pool: Arc<rayon::ThreadPool>,
    pub failure_log: crate::log_limit::DownloadFailureLog,
}

impl Preparer {
    /// Downloads and prepares the image at `url` (relative paths resolve against `base_dir`).
    pub async fn prepare(&self, url: &str, base_dir: Option<PathBuf>) -> Result<PreparedImage, RowFailure> {
        let location = locate(url, base_dir.as_deref()).map_err(|e| RowFailure { status: e.status, message: e.message, info: None })?;
        let bytes = self.fetcher.fetch(&location).await.map_err(|e| {
            self.failure_log.record(&location, e.status, &e.message);
            RowFailure { status: e.status, message: e.message, info: None }
        })?;
        crate::metrics::metrics().record_download(bytes.len());

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let limits = self.limits;
        let config = self.preprocess;
        let jpeg_min_side = self.jpeg_min_side;
        self.pool.spawn(move || {
            let _ = sender.send(decode_and_preprocess(&bytes, &limits, jpeg_min_side, &config));
        });
        receiver.await.unwrap_or_else(|_| {
            Err(RowFailure { status: RowStatus::DecodeError, message: "image decoder thread stopped".into(), info: None })
        })
    }
}

thread_local! {
    /// One resizer per pool thread, so its buffers are reused across images.
    static PREPROCESSOR: RefCell<Option<Preprocessor>> = const { RefCell::new(None) };
}

fn decode_and_preprocess(
    bytes: &[u8],
    limits: &DecodeLimits,
    jpeg_min_side: Option<u32>,
    config: &PreprocessConfig,
) -> Result<PreparedImage, RowFailure> {
    let sha256 = hex(&Sha256::digest(bytes));
    let failure = |status: RowStatus, message: String, info: Option<ImageInfo>| RowFailure { status, message, info };

    let mut pixels = vec![0f32; config.output_len()];
    let summary = PREPROCESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|p| p.config() != config) {
            *slot = Some(Preprocessor::new(*config).map_err(PrepareError::Preprocess)?);
        }
        let preprocessor = slot.as_mut().expect("preprocessor was just set");
        preprocessor.decode_and_run(bytes, limits, jpeg_min_side, &mut pixels)
    });

    let summary = summary.map_err(|e| match e {
        PrepareError::Decode(e) => {
            // A size that was read but rejected (too small or too large) still describes the
            // file, and so does a format that its magic bytes name.
            let (width, height) = e.dimensions().unwrap_or_default();
            let info = ImageInfo { width, height, format: sniffed_format(bytes), sha256: sha256.clone() };
            failure(status_from_decode(e.status()), e.to_string(), Some(info))
        }
        PrepareError::Preprocess(e) => {
            failure(RowStatus::DecodeError, format!("preprocessing failed: {e}"), Some(ImageInfo { sha256: sha256.clone(), ..Default::default() }))
        }
    })?;
    let info = ImageInfo {
        width: summary.width(),
        height: summary.height(),
        format: summary.format.as_str().to_string(),
        sha256,
    };

    Ok(PreparedImage { pixels, info })
}

/// Returns the name of the decodable format that `bytes` start like, or an empty string.
fn sniffed_format(bytes: &[u8]) -> String {
    match sniff_format(bytes) {
        Sniffed::Image(format) => format.as_str().to_string(),
        Sniffed::UnsupportedImage(_) | Sniffed::NotAnImage(_) => String::new(),
    }
}

fn status_from_decode(status: &str) -> RowStatus {
    match status {
        "not_an_image" => RowStatus::NotAnImage,
        "unsupported_format" => RowStatus::UnsupportedFormat,
        "too_large" => RowStatus::TooLarge,
        "too_small" => RowStatus::TooSmall,
        _ => RowStatus::DecodeError,
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}
