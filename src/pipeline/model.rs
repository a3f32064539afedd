//! The model stage: one OS thread owns the captioner and pulls prepared images from a bounded
//! channel, filling batches across shards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Tensor;
use capfilt_workers::filter::{Filter, TextScore};
use capfilt_workers::{Caption, Captioner, ModelError};

use super::in_flight::{ImageKey, InFlight, Waiter};
use super::prepare::ImageInfo;
use super::{Event, RowId};

/// Texts the filter scores in one pass at most. Many rows sharing a popular image each bring a
/// web caption, and one pass over all of them could need more memory than a whole batch.
const MAX_TEXTS_PER_PASS: usize = 256;

/// An image waiting for the model. Its rows are looked up in the in-flight table once the batch
/// has run, so rows that joined meanwhile get its results too.
pub struct BatchItem {
    pub image: ImageKey,
    /// Sampling seed derived from the run seed and the key of the row that started the fetch, so
    /// captions do not depend on batch composition.
    pub seed: u64,
    pub pixels: Vec<f32>,
    pub info: ImageInfo,
}

/// Generated captions of a row and, with the filter on, the scores of every text.
#[derive(Clone)]
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

/// The model thread's models, in-flight table and result channel.
pub struct ModelStage {
    pub captioner: Captioner,
    pub filter: Option<Filter>,
    pub in_flight: Arc<InFlight>,
    pub output: tokio::sync::mpsc::UnboundedSender<Event>,
}

/// Runs batches until the input channel closes and is drained.
pub fn run_model_loop(stage: ModelStage, input: flume::Receiver<BatchItem>, batch_size: usize, linger: Duration) -> ModelStats {
    let mut stats = ModelStats::default();
    let size = stage.captioner.image_size();
    let mut pixels: Vec<f32> = Vec::with_capacity(batch_size * 3 * size * size);

    while let Some(batch) = next_batch(&input, batch_size, linger) {
        // Log lines of the batch carry its size and, once known, the number of rows that get its
        // results.
        let span = tracing::info_span!("batch", size = batch.len(), rows = tracing::field::Empty);
        let _entered = span.enter();
        let started = Instant::now();
        pixels.clear();
        for item in &batch {
            pixels.extend_from_slice(&item.pixels);
        }

        let captioned = caption_batch(&stage.captioner, &batch, &pixels);
        // Taken after captioning, so rows that joined while the batch ran get its result too.
        let waiters: Vec<Vec<Waiter>> = batch.iter().map(|item| stage.in_flight.take(&item.image)).collect();
        span.record("rows", waiters.iter().map(Vec::len).sum::<usize>());
        let result = captioned
            .and_then(|(pixel_values, captions)| results_for_rows(stage.filter.as_ref(), &pixel_values, captions, &waiters))
            .map_err(|e| format!("{e:#}"));

        let elapsed = started.elapsed();
        stats.batches += 1;
        stats.images += batch.len() as u64;
        stats.busy += elapsed;
        crate::metrics::metrics().record_batch(batch.len(), elapsed);
        tracing::debug!(images = batch.len(), ms = elapsed.as_millis() as u64, "batch captioned");

        if let Err(error) = &result {
            tracing::error!(images = batch.len(), %error, "caption batch failed");
        }
        if send_results(batch, waiters, result, &stage.output).is_err() {
            break;
        }
    }
    stats
}

fn caption_batch(captioner: &Captioner, batch: &[BatchItem], pixels: &[f32]) -> Result<(Tensor, Vec<Vec<Caption>>), ModelError> {
    let seeds: Vec<u64> = batch.iter().map(|item| item.seed).collect();
    let pixel_values = captioner.pixel_tensor(pixels, batch.len())?;
    let captions = captioner.caption(&pixel_values, &seeds)?;
    Ok((pixel_values, captions))
}

/// Gives every waiting row its image's captions and, with a filter, scores each row's own web
/// caption and the image's generated captions on the same preprocessed pixels.
fn results_for_rows(
    filter: Option<&Filter>,
    pixel_values: &Tensor,
    captions: Vec<Vec<Caption>>,
    waiters: &[Vec<Waiter>],
) -> Result<Vec<Vec<RowCaptions>>, ModelError> {
    let Some(filter) = filter else {
        let unscored = |captions: Vec<Caption>| RowCaptions { captions, web_score: None, caption_scores: None };
        return Ok(captions.into_iter().zip(waiters).map(|(c, rows)| vec![unscored(c); rows.len()]).collect());
    };

    // Per image: the web captions of its rows that have one, then its generated captions.
    let texts: Vec<Vec<&str>> = waiters
        .iter()
        .zip(&captions)
        .map(|(rows, generated)| {
            let web = rows.iter().filter_map(|w| w.web_caption.as_deref());
            web.chain(generated.iter().map(|c| c.text.as_str())).collect()
        })
        .collect();
    let scores = score_in_passes(filter, pixel_values, &texts)?;

    Ok(captions.into_iter().zip(waiters).zip(scores).map(|((captions, rows), scores)| split_scores(captions, rows, scores)).collect())
}

/// Hands each row its own web caption's score; the generated captions' scores follow the web
/// ones and are the same for every row.
fn split_scores(captions: Vec<Caption>, rows: &[Waiter], mut scores: Vec<TextScore>) -> Vec<RowCaptions> {
    let web_count = rows.iter().filter(|w| w.web_caption.is_some()).count();
    let caption_scores = scores.split_off(web_count);
    let mut web_scores = scores.into_iter();

    rows.iter()
        .map(|row| RowCaptions {
            captions: captions.clone(),
            web_score: row.web_caption.as_ref().and_then(|_| web_scores.next()),
            caption_scores: Some(caption_scores.clone()),
        })
        .collect()
}

/// Scores `texts[i]` against image `i`, encoding the images once and sending at most
/// `MAX_TEXTS_PER_PASS` texts through the ITM head at a time.
fn score_in_passes(filter: &Filter, pixel_values: &Tensor, texts: &[Vec<&str>]) -> Result<Vec<Vec<TextScore>>, ModelError> {
    let mut scores: Vec<Vec<TextScore>> = texts.iter().map(|_| Vec::new()).collect();
    if texts.iter().all(Vec::is_empty) {
        return Ok(scores);
    }
    let image_embeds = filter.encode_images(pixel_values)?;

    let mut done = vec![0usize; texts.len()];
    loop {
        let pass = next_pass(texts, &done);
        if pass.iter().all(Vec::is_empty) {
            return Ok(scores);
        }
        for (i, part) in filter.score(&image_embeds, &pass)?.into_iter().enumerate() {
            done[i] += part.len();
            scores[i].extend(part);
        }
    }
}

/// The next texts to score: image by image, from where the previous passes stopped, until the
/// pass is full.
fn next_pass<'a>(texts: &[Vec<&'a str>], done: &[usize]) -> Vec<Vec<&'a str>> {
    let mut room = MAX_TEXTS_PER_PASS;
    texts
        .iter()
        .zip(done)
        .map(|(texts, &done)| {
            let take = (texts.len() - done).min(room);
            room -= take;
            texts[done..done + take].to_vec()
        })
        .collect()
}

fn send_results(
    batch: Vec<BatchItem>,
    waiters: Vec<Vec<Waiter>>,
    result: Result<Vec<Vec<RowCaptions>>, String>,
    output: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<(), ()> {
    let answers: Vec<Vec<Result<RowCaptions, String>>> = match result {
        Ok(per_image) => per_image.into_iter().map(|rows| rows.into_iter().map(Ok).collect()).collect(),
        Err(error) => waiters.iter().map(|rows| vec![Err(error.clone()); rows.len()]).collect(),
    };

    for ((item, rows), answers) in batch.into_iter().zip(waiters).zip(answers) {
        for (waiter, result) in rows.into_iter().zip(answers) {
            let row = CaptionedRow { row: waiter.row, info: item.info.clone(), result };
            output.send(Event::Captioned(row)).map_err(|_| ())?;
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
