//! Caption decoding strategies over any [`StepDecoder`]: greedy and beam search with the
//! semantics of transformers' `generate()` (version 5.25), so token sequences match the
//! reference on the same weights.
//!
//! Scores are handled on the host: each step copies the last position's logits of the active
//! rows, which for BLIP's 30524-token vocabulary is small next to a decoder step.

use candle_core::Result;
use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Runs the text decoder one step at a time for a set of rows laid out image-major.
pub trait StepDecoder {
    /// Feeds each row's prompt (left-padded with `pad_token` to the longest, padding hidden from
    /// attention) where `group` rows share each image, and returns the last position's logits,
    /// `rows * vocab` values.
    fn prefill(&mut self, prompts: &[Vec<u32>], group: usize, pad_token: u32) -> Result<Vec<f32>>;

    /// Feeds one token per row and returns the logits, `rows * vocab` values.
    fn step(&mut self, tokens: &[u32], group: usize) -> Result<Vec<f32>>;

    /// Keeps the cached rows at `rows` (indices into the current rows, repeats allowed) and the
    /// images at `images` (indices into the current images, in order).
    fn select(&mut self, images: &[u32], rows: &[u32]) -> Result<()>;

    fn vocab_size(&self) -> usize;
}

/// Why a caption ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model emitted the end token (`[SEP]`).
    EndToken,
    /// The sequence reached `max_length`.
    MaxLength,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::EndToken => "end_token",
            StopReason::MaxLength => "max_length",
        }
    }
}

/// One decoded token sequence, prompt included, end token included when emitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// Length-normalised sum of log-probabilities (beam search only).
    pub score: Option<f32>,
}

/// Settings shared by the strategies. Lengths count every token, the prompt included, as
/// transformers' `max_length`/`min_length` do.
#[derive(Debug, Clone)]
pub struct SearchLimits {
    pub max_length: usize,
    pub min_length: usize,
    pub repetition_penalty: f32,
    pub end_token: u32,
    /// Token placed left of shorter prompts in a batch (`[PAD]`); never attended to.
    pub pad_token: u32,
    /// Limits on generated tokens alone (the prompt not counted), as transformers'
    /// `max_new_tokens`/`min_new_tokens`; when set they replace `max_length`/`min_length`.
    pub max_new_tokens: Option<usize>,
    pub min_new_tokens: Option<usize>,
    /// Forbid any n-gram of this size from occurring twice (0 turns it off), as transformers'
    /// `no_repeat_ngram_size`.
    pub no_repeat_ngram_size: usize,
}

impl SearchLimits {
    /// Returns the maximum sequence length, prompt included, for a row whose prompt has
    /// `prompt_len` tokens.
    pub fn max_length_for(&self, prompt_len: usize) -> usize {
        self.max_new_tokens.map_or(self.max_length, |n| prompt_len + n)
    }

    /// Returns the minimum sequence length, prompt included, before the end token is allowed.
    pub fn min_length_for(&self, prompt_len: usize) -> usize {
        self.min_new_tokens.map_or(self.min_length, |n| prompt_len + n)
    }
}

/// Beam search settings beyond [`SearchLimits`].
#[derive(Debug, Clone)]
pub struct BeamSettings {
    pub num_beams: usize,
    pub length_penalty: f32,
    /// transformers' `early_stopping=True`: stop an image once it has `num_beams` finished
    /// hypotheses. `false` applies transformers' default heuristic.
    pub early_stopping: bool,
}

/// Applies the logits processors transformers runs here, in its order: repetition penalty,
/// no-repeat n-grams, then the minimum length (the end token is forbidden while the sequence is
/// too short).
fn process_scores(scores: &mut [f32], sequence: &[u32], prompt_len: usize, limits: &SearchLimits) {
    if limits.repetition_penalty != 1.0 {
        // Each distinct token is penalised once, however often it occurs.
        let mut tokens = sequence.to_vec();
        tokens.sort_unstable();
        tokens.dedup();
        for token in tokens {
            let score = &mut scores[token as usize];
            *score = if *score < 0.0 { *score * limits.repetition_penalty } else { *score / limits.repetition_penalty };
        }
    }

    for token in repeated_ngram_tokens(sequence, limits.no_repeat_ngram_size) {
        scores[token as usize] = f32::NEG_INFINITY;
    }

    if sequence.len() < limits.min_length_for(prompt_len) {
        scores[limits.end_token as usize] = f32::NEG_INFINITY;
    }
}

/// Tokens that would complete an n-gram already present in `sequence` (prompt included, as in
/// transformers' `NoRepeatNGramLogitsProcessor`).
fn repeated_ngram_tokens(sequence: &[u32], n: usize) -> Vec<u32> {
    if n == 0 || sequence.len() + 1 < n {
        return Vec::new();
    }
    let prefix = &sequence[sequence.len() + 1 - n..];
    sequence
        .windows(n)
        .filter(|window| &window[..n - 1] == prefix)
        .map(|window| window[n - 1])
        .collect()
}

fn log_softmax_in_place(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = scores.iter().map(|&s| (s - max).exp()).sum();
    let log_sum = sum.ln() + max;
    for score in scores.iter_mut() {
        *score -= log_sum;
    }
}

/// Index of the largest value; the first one wins ties, as `torch.argmax` does.
fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &score) in scores.iter().enumerate() {
        if score > scores[best] {
            best = i;
        }
    }
    best
}

/// Greedy decoding of one image per prompt. Lengths count each row's own prompt. A finished
/// image's row is dropped from the decoder so it costs nothing further.
pub fn greedy(decoder: &mut impl StepDecoder, prompts: &[Vec<u32>], limits: &SearchLimits) -> Result<Vec<Sequence>> {
    let vocab = decoder.vocab_size();
    let mut sequences: Vec<Vec<u32>> = prompts.to_vec();
    let mut finished: Vec<Option<StopReason>> = vec![None; prompts.len()];
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let mut logits = decoder.prefill(prompts, 1, limits.pad_token)?;

    loop {
        let mut still_active = Vec::with_capacity(active.len());
        for (row, &image) in active.iter().enumerate() {
            let scores = &mut logits[row * vocab..(row + 1) * vocab];
            process_scores(scores, &sequences[image], prompts[image].len(), limits);
            let token = argmax(scores) as u32;
            sequences[image].push(token);

            if token == limits.end_token {
                finished[image] = Some(StopReason::EndToken);
            } else if sequences[image].len() >= limits.max_length_for(prompts[image].len()) {
                finished[image] = Some(StopReason::MaxLength);
            } else {
                still_active.push(row as u32);
            }
        }

        if still_active.is_empty() {
            break;
        }
        if still_active.len() != active.len() {
            decoder.select(&still_active, &still_active)?;
        }
        active = still_active.iter().map(|&row| active[row as usize]).collect();
        let feed: Vec<u32> = active.iter().map(|&image| *sequences[image].last().expect("sequences start with a prompt")).collect();
        logits = decoder.step(&feed, 1)?;
    }

    Ok(sequences
        .into_iter()
        .zip(finished)
        .map(|(tokens, stop)| Sequence { tokens, stop: stop.unwrap_or(StopReason::MaxLength), score: None })
        .collect())
}

#[derive(Clone)]
struct Hypothesis {
    tokens: Vec<u32>,
    score: f32,
    finished: bool,
    /// The running beam this one extended at the last step.
    parent: usize,
}

/// Per-image beam state, mirroring transformers' running and finished beam tensors.
struct BeamImage {
    running: Vec<Hypothesis>,
    finished: Vec<Hypothesis>,
    improvement_possible: bool,
}

/// A top-k candidate: accumulated log-probability, the beam it extends and the new token.
#[derive(Clone, Copy)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
}

/// Selects the `k` best of `scores` (laid out `[beams, vocab]`), best first.
fn top_candidates(scores: &[f32], vocab: usize, k: usize) -> Vec<Candidate> {
    let mut best: Vec<Candidate> = Vec::with_capacity(k + 1);
    for (index, &score) in scores.iter().enumerate() {
        if best.len() == k && score <= best[k - 1].score {
            continue;
        }
        let position = best.partition_point(|c| c.score >= score);
        best.insert(position, Candidate { score, beam: index / vocab, token: (index % vocab) as u32 });
        best.truncate(k);
    }
    best
}

/// Keeps the `k` highest-scoring hypotheses, best first (a stable sort, so earlier entries win ties).
fn keep_best(mut hypotheses: Vec<Hypothesis>, k: usize) -> Vec<Hypothesis> {
    hypotheses.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal));
    hypotheses.truncate(k);
    hypotheses
}

const NEG_LARGE: f32 = -1.0e9;

impl BeamImage {
    fn new(prompt: &[u32], num_beams: usize) -> Self {
        let placeholder = Hypothesis { tokens: prompt.to_vec(), score: NEG_LARGE, finished: false, parent: 0 };
        Self {
            running: vec![Hypothesis { score: 0.0, ..placeholder.clone() }],
            finished: vec![placeholder; num_beams],
            improvement_possible: true,
        }
    }

    /// Advances this image by one token given each running beam's processed log-probabilities.
    fn advance(&mut self, log_probs: &[f32], vocab: usize, prompt_len: usize, limits: &SearchLimits, beam: &BeamSettings) {
        let num_beams = beam.num_beams;
        let cur_len = self.running[0].tokens.len();

        let mut accumulated = log_probs.to_vec();
        for (b, hypothesis) in self.running.iter().enumerate() {
            for score in &mut accumulated[b * vocab..(b + 1) * vocab] {
                *score += hypothesis.score;
            }
        }
        let candidates = top_candidates(&accumulated, vocab, 2 * num_beams);
        let max_length = limits.max_length_for(prompt_len);
        let hits_stop = |c: &Candidate| c.token == limits.end_token || cur_len + 1 >= max_length;

        self.update_finished(&candidates, &hits_stop, cur_len + 1 - prompt_len, beam);
        self.update_running(&candidates, &hits_stop, num_beams);
        self.check_improvement(cur_len + 1 - prompt_len, beam);
    }

    fn extend(&self, candidate: &Candidate) -> Vec<u32> {
        let mut tokens = self.running[candidate.beam].tokens.clone();
        tokens.push(candidate.token);
        tokens
    }

    fn update_finished(&mut self, candidates: &[Candidate], hits_stop: &dyn Fn(&Candidate) -> bool, generated: usize, beam: &BeamSettings) {
        let all_full = self.finished.iter().all(|h| h.finished);
        let mut merged = self.finished.clone();
        for (position, candidate) in candidates.iter().enumerate() {
            let just_finished = hits_stop(candidate) && position < beam.num_beams;
            let mut score = candidate.score / (generated as f32).powf(beam.length_penalty);
            if all_full && beam.early_stopping {
                score += NEG_LARGE;
            }
            if !self.improvement_possible {
                score += NEG_LARGE;
            }
            if !just_finished {
                score += NEG_LARGE;
            }
            merged.push(Hypothesis { tokens: self.extend(candidate), score, finished: just_finished, parent: candidate.beam });
        }
        self.finished = keep_best(merged, beam.num_beams);
    }

    fn update_running(&mut self, candidates: &[Candidate], hits_stop: &dyn Fn(&Candidate) -> bool, num_beams: usize) {
        let next: Vec<Hypothesis> = candidates
            .iter()
            .map(|c| Hypothesis {
                tokens: self.extend(c),
                score: if hits_stop(c) { c.score + NEG_LARGE } else { c.score },
                finished: false,
                parent: c.beam,
            })
            .collect();
        self.running = keep_best(next, num_beams);
    }

    /// transformers' `_check_early_stop_heuristic`: stop once the best running beam, scored at
    /// its current length, cannot beat the worst finished one.
    fn check_improvement(&mut self, generated: usize, beam: &BeamSettings) {
        let best_possible = self.running[0].score / (generated as f32).powf(beam.length_penalty);
        let worst_finished = self.finished.iter().map(|h| h.score).fold(f32::INFINITY, f32::min);
        let any_better = self.finished.iter().any(|h| best_possible > if h.finished { worst_finished } else { NEG_LARGE });
        self.improvement_possible &= any_better;
    }

    fn is_done(&self, early_stopping: bool) -> bool {
        !self.improvement_possible || (early_stopping && self.finished.iter().all(|h| h.finished))
    }

    fn best(&self, end_token: u32) -> Sequence {
        let best = &self.finished[0];
        let stop = if best.tokens.last() == Some(&end_token) { StopReason::EndToken } else { StopReason::MaxLength };
        Sequence { tokens: best.tokens.clone(), stop, score: Some(best.score) }
    }
}

/// Runs beam search, one image per prompt, and returns the best finished hypothesis per image.
/// An image whose search can no longer improve is dropped from the decoder. transformers keeps
/// computing it but discards the results, so tokens are the same.
pub fn beam_search(decoder: &mut impl StepDecoder, prompts: &[Vec<u32>], limits: &SearchLimits, beam: &BeamSettings) -> Result<Vec<Sequence>> {
    let vocab = decoder.vocab_size();
    let mut states: Vec<BeamImage> = prompts.iter().map(|prompt| BeamImage::new(prompt, beam.num_beams)).collect();
    let mut active: Vec<usize> = (0..prompts.len()).collect();
    let mut group = 1;
    let mut logits = decoder.prefill(prompts, 1, limits.pad_token)?;

    loop {
        let mut all_hit_stop = true;
        for (slot, &image) in active.iter().enumerate() {
            let state = &mut states[image];
            let mut log_probs = logits[slot * group * vocab..(slot + 1) * group * vocab].to_vec();
            for (b, hypothesis) in state.running.iter().enumerate() {
                let row = &mut log_probs[b * vocab..(b + 1) * vocab];
                log_softmax_in_place(row);
                process_scores(row, &hypothesis.tokens, prompts[image].len(), limits);
            }
            state.advance(&log_probs, vocab, prompts[image].len(), limits, beam);
            all_hit_stop &= state.running.iter().all(|h| h.score <= NEG_LARGE / 2.0);
        }

        let (kept_images, rows) = next_rows(&states, &active, group, beam);
        if kept_images.is_empty() || all_hit_stop {
            break;
        }
        decoder.select(&kept_images, &rows)?;
        active = kept_images.iter().map(|&slot| active[slot as usize]).collect();
        group = beam.num_beams;
        let feed: Vec<u32> = active.iter().flat_map(|&image| states[image].running.iter().map(|h| *h.tokens.last().expect("non-empty"))).collect();
        logits = decoder.step(&feed, group)?;
    }

    Ok(states.iter().map(|state| state.best(limits.end_token)).collect())
}

/// Images still searching, and for each of their new running beams the decoder row it extends.
fn next_rows(states: &[BeamImage], active: &[usize], group: usize, beam: &BeamSettings) -> (Vec<u32>, Vec<u32>) {
    let mut kept_images = Vec::new();
    let mut rows = Vec::new();
    for (slot, &image) in active.iter().enumerate() {
        let state = &states[image];
        if state.is_done(beam.early_stopping) {
            continue;
        }
        kept_images.push(slot as u32);
        for hypothesis in &state.running {
            rows.push((slot * group + hypothesis.parent) as u32);
        }
    }
    (kept_images, rows)
}

/// Nucleus sampling settings. The logits warpers run in transformers' order: temperature, then
/// top-k, then top-p.
#[derive(Debug, Clone)]
pub struct SampleSettings {
    /// Captions drawn per image.
    pub num_samples: usize,
    /// Smallest set of most likely tokens whose probability mass reaches `top_p` (1.0 keeps all).
    pub top_p: f32,
    /// Keep only the `top_k` most likely tokens (0 keeps all).
    pub top_k: usize,
    pub temperature: f32,
}

/// Scales, then masks to `-inf` every token outside the top-k and the top-p nucleus.
pub fn warp_scores(scores: &mut [f32], settings: &SampleSettings) {
    if settings.temperature != 1.0 {
        for score in scores.iter_mut() {
            *score /= settings.temperature;
        }
    }

    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap_or(std::cmp::Ordering::Equal));

    let mut keep = order.len();
    if settings.top_k > 0 {
        keep = keep.min(settings.top_k);
    }
    if settings.top_p < 1.0 {
        let max = scores[order[0]];
        let total: f32 = order[..keep].iter().map(|&i| (scores[i] - max).exp()).sum();
        let mut mass = 0.0;
        for (rank, &index) in order[..keep].iter().enumerate() {
            if mass >= settings.top_p {
                keep = rank;
                break;
            }
            mass += (scores[index] - max).exp() / total;
        }
    }

    for &index in &order[keep.max(1)..] {
        scores[index] = f32::NEG_INFINITY;
    }
}

/// Draws a token from the softmax of (already warped) scores.
fn draw(scores: &[f32], rng: &mut ChaCha8Rng) -> u32 {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights = scores.iter().map(|&s| if s == f32::NEG_INFINITY { 0.0 } else { (s - max).exp() });
    match WeightedIndex::new(weights) {
        Ok(distribution) => distribution.sample(rng) as u32,
        Err(_) => argmax(scores) as u32,
    }
}

/// Creates the random stream of one sample of one image. It depends only on the image's seed and
/// the sample's index, so a row gives the same captions in any batch.
pub fn sample_rng(image_seed: u64, sample: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(image_seed);
    rng.set_stream(sample as u64);
    rng
}

/// Nucleus sampling of `settings.num_samples` captions for each image (one prompt and one seed
/// per image). The samples of an image share its cross-attention keys and values; an image
/// leaves the batch once all its samples have ended.
pub fn sample(
    decoder: &mut impl StepDecoder,
    prompts: &[Vec<u32>],
    seeds: &[u64],
    limits: &SearchLimits,
    settings: &SampleSettings,
) -> Result<Vec<Vec<Sequence>>> {
    let vocab = decoder.vocab_size();
    let group = settings.num_samples;
    let images = prompts.len();
    let mut rows: Vec<Vec<u32>> = (0..images * group).map(|r| prompts[r / group].clone()).collect();
    let mut stops: Vec<Option<StopReason>> = vec![None; images * group];
    let mut rngs: Vec<ChaCha8Rng> = (0..images * group).map(|r| sample_rng(seeds[r / group], r % group)).collect();
    let mut active: Vec<usize> = (0..images).collect();
    let mut logits = decoder.prefill(&rows, group, limits.pad_token)?;

    loop {
        for (slot, &image) in active.iter().enumerate() {
            for sample in 0..group {
                let row = image * group + sample;
                if stops[row].is_some() {
                    continue;
                }
                let scores = &mut logits[(slot * group + sample) * vocab..(slot * group + sample + 1) * vocab];
                process_scores(scores, &rows[row], prompts[image].len(), limits);
                warp_scores(scores, settings);
                let token = draw(scores, &mut rngs[row]);
                rows[row].push(token);
                if token == limits.end_token {
                    stops[row] = Some(StopReason::EndToken);
                } else if rows[row].len() >= limits.max_length_for(prompts[image].len()) {
                    stops[row] = Some(StopReason::MaxLength);
                }
            }
        }

        let (kept, selected) = unfinished_groups(&active, &stops, group);
        if kept.is_empty() {
            break;
        }
        if kept.len() != active.len() {
            decoder.select(&kept, &selected)?;
        }
        active = kept.iter().map(|&slot| active[slot as usize]).collect();
        // A finished sample keeps its row (the image's other samples still run) and is fed the
        // end token; its output is ignored.
        let feed: Vec<u32> = active
            .iter()
            .flat_map(|&image| (0..group).map(move |s| image * group + s))
            .map(|row| if stops[row].is_some() { limits.end_token } else { *rows[row].last().expect("rows start with the prompt") })
            .collect();
        logits = decoder.step(&feed, group)?;
    }

    let mut sequences = rows.into_iter().zip(stops).map(|(tokens, stop)| Sequence { tokens, stop: stop.unwrap_or(StopReason::MaxLength), score: None });
    Ok((0..images).map(|_| sequences.by_ref().take(group).collect()).collect())
}

/// Slots of images with at least one running sample, and the decoder rows they keep.
fn unfinished_groups(active: &[usize], stops: &[Option<StopReason>], group: usize) -> (Vec<u32>, Vec<u32>) {
    let mut kept = Vec::new();
    let mut rows = Vec::new();
    for (slot, &image) in active.iter().enumerate() {
        if (0..group).any(|s| stops[image * group + s].is_none()) {
            kept.push(slot as u32);
            rows.extend((0..group).map(|s| (slot * group + s) as u32));
        }
    }
    (kept, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probabilities(scores: &[f32]) -> Vec<f32> {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
        let total: f32 = exp.iter().sum();
        exp.iter().map(|e| e / total).collect()
    }

    #[test]
    fn repeated_ngrams_banned() {
        // "a b c a b" with n = 3: the prefix "a b" was followed by "c", so "c" is banned.
        assert_eq!(repeated_ngram_tokens(&[1, 2, 3, 1, 2], 3), vec![3]);
        assert_eq!(repeated_ngram_tokens(&[1, 2, 3, 1, 2], 0), Vec::<u32>::new());
        assert_eq!(repeated_ngram_tokens(&[1, 2, 3, 4], 3), Vec::<u32>::new());
        // n = 1 bans every token already present.
        let mut banned = repeated_ngram_tokens(&[5, 6, 5], 1);
        banned.sort();
        assert_eq!(banned, vec![5, 5, 6]);
    }

    #[test]
    fn new_token_limits_count_from_prompt() {
        let limits = SearchLimits {
            max_length: 20,
            min_length: 5,
            repetition_penalty: 1.0,
            end_token: 102,
            pad_token: 0,
            max_new_tokens: Some(10),
            min_new_tokens: Some(2),
            no_repeat_ngram_size: 0,
        };
        assert_eq!(limits.max_length_for(4), 14);
        assert_eq!(limits.min_length_for(4), 6);
        let plain = SearchLimits { max_new_tokens: None, min_new_tokens: None, ..limits };
        assert_eq!(plain.max_length_for(4), 20);
        assert_eq!(plain.min_length_for(4), 5);
    }

    #[test]
    fn top_p_keeps_smallest_nucleus() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let scores: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let settings = SampleSettings { num_samples: 1, top_p: 0.9, top_k: 0, temperature: 1.0 };

        let mut warped = scores.clone();
        warp_scores(&mut warped, &settings);

        assert!(warped[..3].iter().all(|s| s.is_finite()), "0.5 + 0.3 < 0.9, so the third token is needed: {warped:?}");
        assert_eq!(warped[3], f32::NEG_INFINITY);
        let kept_mass: f32 = probabilities(&scores)[..3].iter().sum();
        assert!(kept_mass >= 0.9);
    }

    #[test]
    fn warp_keeps_at_least_one() {
        let mut scores = vec![5.0f32, 1.0, 0.5];
        warp_scores(&mut scores, &SampleSettings { num_samples: 1, top_p: 0.01, top_k: 2, temperature: 1.0 });
        assert_eq!(scores[0], 5.0);
        assert!(scores[1..].iter().all(|s| *s == f32::NEG_INFINITY));
    }

    #[test]
    fn temperature_sharpens() {
        let mut scores = vec![2.0f32, 1.0];
        warp_scores(&mut scores, &SampleSettings { num_samples: 1, top_p: 1.0, top_k: 0, temperature: 0.5 });
        assert_eq!(scores, vec![4.0, 2.0]);
    }

    #[test]
    fn draws_follow_distribution_and_seed() {
        let scores: Vec<f32> = [0.7f32, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let mut rng = sample_rng(7, 0);
        let mut counts = [0usize; 3];
        for _ in 0..20_000 {
            counts[draw(&scores, &mut rng) as usize] += 1;
        }
        let share = counts[0] as f64 / 20_000.0;
        assert!((share - 0.7).abs() < 0.02, "token 0 drawn {share} of the time");

        let draws = |seed: u64, sample: usize| {
            let mut rng = sample_rng(seed, sample);
            (0..64).map(|_| draw(&scores, &mut rng)).collect::<Vec<u32>>()
        };
        assert_eq!(draws(7, 3), draws(7, 3), "same seed and sample, same draws");
        assert_ne!(draws(7, 3), draws(8, 3), "another seed, other draws");
        assert_ne!(draws(7, 3), draws(7, 4), "another sample, other draws");
    }
}
