//! The model stage: one OS thread owns the captioner and pulls prepared images from a bounded
//! channel, filling batches across shards.

use std::time::{Duration, Instant};

use capfilt_workers::filter::{Filter, TextScore};
use capfilt_workers::{Caption, Captioner};

use super::prepare::ImageInfo;
use super::{Event, RowId};

/// An image waiting for the model.
pub struct BatchItem {
    pub row: RowId,
    /// Sampling seed derived from the run seed and the row key, so captions do not depend on
    /// batch composition.
    pub seed: u64,
    /// The input's web caption, scored by the filter.
    pub web_caption: Option<String>,
    pub pixels: Vec<f32>,
    pub info: ImageInfo,
}

/// Generated captions of a row and, with the filter on, the scores of every text.
pub struct RowCaptions {
    pub captions: Vec<Caption>,
    pub web_score: Option<TextScore>,
    pub caption_scores: Option<Vec<TextScore>>,
}

/// A captioned row, or a batch failure that affects every row in it.
pub struct CaptionedRow {
    pub row: RowId,
    pub info: ImageInfo,
    pub result: Result<RowCaptions, String>,
}

/// Batch timings, for the run summary.
#[derive(Debug, Default, Clone, Copy)]
pub struct ModelStats {
    pub batches: u64,
    pub images: u64,
    pub busy: Duration,
}

/// Runs batches until the input channel closes and is drained.
pub fn run_model_loop(
    captioner: Captioner,
    filter: Option<Filter>,
    input: flume::Receiver<BatchItem>,
    output: tokio::sync::mpsc::UnboundedSender<Event>,
    batch_size: usize,
    linger: Duration,
) -> ModelStats {
    let mut stats = ModelStats::default();
    let size = captioner.image_size();
    let mut pixels: Vec<f32> = Vec::with_capacity(batch_size * 3 * size * size);

    while let Some(batch) = next_batch(&input, batch_size, linger) {
        let started = Instant::now();
        pixels.clear();
        for item in &batch {
            pixels.extend_from_slice(&item.pixels);
        }

        let result = caption_and_score(&captioner, filter.as_ref(), &batch, &pixels).map_err(|e| format!("{e:#}"));
        let elapsed = started.elapsed();
        stats.batches += 1;
        stats.images += batch.len() as u64;
        stats.busy += elapsed;
        tracing::debug!(images = batch.len(), ms = elapsed.as_millis() as u64, "batch captioned");

        if let Err(error) = &result {
            tracing::error!(images = batch.len(), %error, "caption batch failed");
        }
        if send_results(batch, result, &output).is_err() {
            break;
        }
    }
    stats
}

/// Captions a batch and, with a filter, scores each image's web caption and generated captions
/// on the same preprocessed pixels.
fn caption_and_score(
    captioner: &Captioner,
    filter: Option<&Filter>,
    batch: &[BatchItem],
    pixels: &[f32],
) -> Result<Vec<RowCaptions>, capfilt_workers::ModelError> {
    let seeds: Vec<u64> = batch.iter().map(|item| item.seed).collect();
    let pixel_values = captioner.pixel_tensor(pixels, batch.len())?;
    let captions = captioner.caption(&pixel_values, &seeds)?;

    let Some(filter) = filter else {
        return Ok(captions.into_iter().map(|captions| RowCaptions { captions, web_score: None, caption_scores: None }).collect());
    };

    let texts: Vec<Vec<&str>> = batch
        .iter()
        .zip(&captions)
        .map(|(item, generated)| item.web_caption.iter().map(String::as_str).chain(generated.iter().map(|c| c.text.as_str())).collect())
        .collect();
    let scores = filter.score_pixels(&pixel_values, &texts)?;

    Ok(batch
        .iter()
        .zip(captions)
        .zip(scores)
        .map(|((item, captions), mut scores)| {
            let web_score = item.web_caption.is_some().then(|| scores.remove(0));
            RowCaptions { captions, web_score, caption_scores: Some(scores) }
        })
        .collect())
}

fn send_results(
    batch: Vec<BatchItem>,
    result: Result<Vec<RowCaptions>, String>,
    output: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<(), ()> {
    match result {
        Ok(captions) => {
            for (item, captions) in batch.into_iter().zip(captions) {
                let row = CaptionedRow { row: item.row, info: item.info, result: Ok(captions) };
                output.send(Event::Captioned(row)).map_err(|_| ())?;
            }
        }
        Err(error) => {
            for item in batch {
                let row = CaptionedRow { row: item.row, info: item.info, result: Err(error.clone()) };
                output.send(Event::Captioned(row)).map_err(|_| ())?;
            }
        }
    }
    Ok(())
}

/// Waits for the first image, then gathers up to `batch_size`, waiting at most `linger` for
/// stragglers. Returns `None` once the channel is closed and empty.
fn next_batch(input: &flume::Receiver<BatchItem>, batch_size: usize, linger: Duration) -> Option<Vec<BatchItem>> {
    let first = input.recv().ok()?;
    let mut batch = Vec::with_capacity(batch_size);
    batch.push(first);

    let deadline = Instant::now() + linger;
    while batch.len() < batch_size {
        match input.recv_deadline(deadline) {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some(batch)
}
