//! Reference parity for the CapFilt filter: the tiny random-weight BLIP retrieval model in
//! `tests/fixtures` gives transformers' ITM probabilities and ITC cosines, and captions are
//! cleaned and tokenised as `tests/fixtures/generate.py` did.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use capfilt_workers::blip::itm::ItmModel;
use capfilt_workers::blip::model::{read_config, var_builder};
use capfilt_workers::blip::CheckpointFiles;
use capfilt_workers::filter::{Filter, FilterSettings, FirstToken, TextScore};
use serde_json::Value;

/// Tolerance against transformers' float32 values.
const REFERENCE_TOLERANCE: f32 = 1e-4;
/// Tolerance between a row scored in a padded batch and the same row scored alone.
const BATCH_TOLERANCE: f32 = 1e-5;

const CLS: u32 = 101;
const ENC: u32 = 30523;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

struct Reference {
    json: Value,
    tensors: HashMap<String, Tensor>,
    pixel_values: Tensor,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixtures().join("reference/itm.json")).unwrap();
    let tensors = candle_core::safetensors::load(fixtures().join("reference/itm.safetensors"), &Device::Cpu).unwrap();
    let captioning = candle_core::safetensors::load(fixtures().join("reference/captioning.safetensors"), &Device::Cpu).unwrap();
    Reference { json: serde_json::from_str(&text).unwrap(), tensors, pixel_values: captioning["pixel_values"].clone() }
}

impl Reference {
    fn texts(&self) -> &Vec<Value> {
        self.json["texts"].as_array().unwrap()
    }

    fn raw_texts(&self) -> Vec<String> {
        self.texts().iter().map(|t| t["raw"].as_str().unwrap().to_string()).collect()
    }

    fn images(&self) -> usize {
        self.pixel_values.dim(0).unwrap()
    }

    /// Reads a `[images, texts]` f32 tensor of `itm.safetensors` as nested rows.
    fn grid(&self, name: &str) -> Vec<Vec<f32>> {
        self.tensors[name].to_vec2().unwrap()
    }

    /// Reads a `[images][texts]` array of `itm.json` → `scores`.
    fn json_grid(&self, first: &str, key: &str) -> Vec<Vec<f32>> {
        let rows = self.json["scores"][first][key].as_array().unwrap();
        rows.iter().map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()).collect()
    }

    /// Returns the padded reference token ids `[texts, 35]` with the first token replaced.
    fn input_ids(&self, first_token: u32) -> Tensor {
        let ids = self.tensors["input_ids"].to_dtype(DType::U32).unwrap();
        let rest = ids.narrow(1, 1, ids.dim(1).unwrap() - 1).unwrap();
        let first = Tensor::full(first_token, (ids.dim(0).unwrap(), 1), &Device::Cpu).unwrap();
        Tensor::cat(&[&first, &rest], 1).unwrap().contiguous().unwrap()
    }

    fn attention_mask(&self) -> Tensor {
        self.tensors["attention_mask"].to_dtype(DType::U32).unwrap()
    }
}

fn itm_files() -> CheckpointFiles {
    CheckpointFiles::in_dir(&fixtures().join("models/blip-tiny-itm")).unwrap()
}

fn itm_model() -> ItmModel {
    let files = itm_files();
    let config = read_config(&files.config).unwrap();
    ItmModel::load(config, var_builder(&files.weights, DType::F32, &Device::Cpu).unwrap()).unwrap()
}

fn filter(first_token: FirstToken) -> Filter {
    let settings = FilterSettings { first_token, itc: true, ..Default::default() };
    Filter::load(&itm_files(), settings, &Device::Cpu, DType::F32).unwrap()
}

/// Lays out every (image, text) pair image-major, as the reference's batched call does. It
/// returns the text rows repeated per image and the image each row belongs to.
fn all_pairs(texts: &Tensor, images: usize) -> (Tensor, Vec<u32>) {
    let count = texts.dim(0).unwrap() as u32;
    let text_rows: Vec<u32> = (0..images as u32).flat_map(|_| 0..count).collect();
    let image_index: Vec<u32> = (0..images as u32).flat_map(|image| std::iter::repeat_n(image, count as usize)).collect();

    let rows = Tensor::from_vec(text_rows, image_index.len(), &Device::Cpu).unwrap();
    (texts.index_select(&rows, 0).unwrap(), image_index)
}

/// Returns the largest absolute difference between two equally shaped grids. It panics on a
/// shape mismatch, so a missing row cannot pass as a small difference.
fn max_diff(actual: &[Vec<f32>], expected: &[Vec<f32>]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "row count");
    actual
        .iter()
        .zip(expected)
        .flat_map(|(a, e)| {
            assert_eq!(a.len(), e.len(), "column count");
            a.iter().zip(e).map(|(x, y)| (x - y).abs())
        })
        .fold(0.0, f32::max)
}

fn to_grid(flat: Vec<f32>, columns: usize) -> Vec<Vec<f32>> {
    flat.chunks(columns).map(<[f32]>::to_vec).collect()
}

#[test]
fn itm_probabilities_and_logits_match_transformers() {
    let reference = reference();
    let model = itm_model();
    let image_embeds = model.encode_images(&reference.pixel_values).unwrap();
    let texts = reference.texts().len();

    for (name, first_token) in [("cls", CLS), ("enc", ENC)] {
        let (ids, image_index) = all_pairs(&reference.input_ids(first_token), reference.images());
        let (mask, _) = all_pairs(&reference.attention_mask(), reference.images());

        let logits = model.itm_logits(&image_embeds, &ids, &mask, &image_index).unwrap();
        let logits: Vec<f32> = logits.flatten_all().unwrap().to_vec1().unwrap();
        let expected: Vec<f32> = reference.tensors[&format!("itm_logits_{name}")].flatten_all().unwrap().to_vec1().unwrap();
        let logit_diff = max_diff(&to_grid(logits, 2), &to_grid(expected, 2));

        let probabilities = model.itm_probabilities(&image_embeds, &ids, &mask, &image_index).unwrap();
        let prob_diff = max_diff(&to_grid(probabilities, texts), &reference.grid(&format!("itm_prob_{name}")));

        eprintln!("[{name}] ITM max |logit diff| {logit_diff:e}, max |P diff| {prob_diff:e}");
        assert!(logit_diff <= REFERENCE_TOLERANCE, "[{name}] ITM logits differ by {logit_diff}");
        assert!(prob_diff <= REFERENCE_TOLERANCE, "[{name}] ITM probabilities differ by {prob_diff}");
    }
}

#[test]
fn itc_cosines_match_transformers() {
    let reference = reference();
    let model = itm_model();
    let image_embeds = model.encode_images(&reference.pixel_values).unwrap();
    let texts = reference.texts().len();

    for (name, first_token) in [("cls", CLS), ("enc", ENC)] {
        let (ids, image_index) = all_pairs(&reference.input_ids(first_token), reference.images());
        let (mask, _) = all_pairs(&reference.attention_mask(), reference.images());

        let cosines = model.itc_cosines(&image_embeds, &ids, &mask, &image_index).unwrap();
        let diff = max_diff(&to_grid(cosines, texts), &reference.grid(&format!("itc_cosine_{name}")));

        eprintln!("[{name}] ITC max |cosine diff| {diff:e}");
        assert!(diff <= REFERENCE_TOLERANCE, "[{name}] ITC cosines differ by {diff}");
    }
}

#[test]
fn first_token_changes_reference_scores() {
    // If [CLS] and [ENC] gave equal scores, a port that ignored the first token would pass
    // the parity tests above.
    let reference = reference();
    let gap = max_diff(&reference.grid("itm_prob_cls"), &reference.grid("itm_prob_enc"));
    assert!(gap > 100.0 * REFERENCE_TOLERANCE, "reference [CLS] and [ENC] probabilities differ by only {gap}");
}

#[test]
fn cleaned_texts_and_ids_match_reference() {
    let reference = reference();
    let filter = filter(FirstToken::Enc);

    let batch = filter.tokenize(&reference.raw_texts()).unwrap();

    for (row, text) in reference.texts().iter().enumerate() {
        assert_eq!(batch.cleaned[row], text["pre_caption"].as_str().unwrap(), "text {row}: cleaned");
        let expected: Vec<u32> = serde_json::from_value(text["unpadded_input_ids"].clone()).unwrap();
        assert_eq!(batch.ids[row], expected, "text {row}: token ids");
    }

    let padded = batch.padded(0);
    let expected_ids: Vec<u32> = reference.tensors["input_ids"].to_dtype(DType::U32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let expected_mask: Vec<u32> = reference.attention_mask().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(padded.ids, expected_ids, "padded ids");
    assert_eq!(padded.mask, expected_mask, "attention mask");
}

#[test]
fn empty_and_non_ascii_texts_tokenise() {
    let filter = filter(FirstToken::Enc);

    let batch = filter.tokenize(&["", "Ünïcödé café 東京 ☕"]).unwrap();

    assert_eq!(batch.ids[0], vec![101, 102], "empty text is [CLS] [SEP]");
    assert_eq!(batch.ids[1], vec![101, 27260, 7668, 1879, 1755, 100, 102], "accents stripped, CJK split, ☕ unknown");
}

#[test]
fn long_text_truncated_to_limits() {
    let reference = reference();
    let long = &reference.texts()[3];
    let raw = long["raw"].as_str().unwrap();
    assert!(raw.split_whitespace().count() >= 75, "fixture text 3 should be the ~80-word one");

    let batch = filter(FirstToken::Enc).tokenize(&[raw]).unwrap();

    assert_eq!(batch.cleaned[0].split(' ').count(), 50, "cleaned to max_words");
    assert_eq!(batch.ids[0].len(), 35, "truncated to max_tokens");
    assert_eq!(batch.ids[0].first(), Some(&CLS));
    assert_eq!(batch.ids[0].last(), Some(&102), "[SEP] kept after truncation");
}

#[test]
fn filter_scores_match_transformers() {
    let reference = reference();
    let texts: Vec<Vec<String>> = (0..reference.images()).map(|_| reference.raw_texts()).collect();
    // ITC uses the tokenizer's [CLS] whatever the ITM first token is, because BLIP puts [ENC]
    // only into the image-grounded pass.
    let expected_itc = reference.grid("itc_cosine_cls");

    for (name, first_token) in [("cls", FirstToken::Cls), ("enc", FirstToken::Enc)] {
        let scores = filter(first_token).score_pixels(&reference.pixel_values, &texts).unwrap();

        let itm: Vec<Vec<f32>> = scores.iter().map(|row| row.iter().map(|s| s.itm).collect()).collect();
        let itc: Vec<Vec<f32>> = scores.iter().map(|row| row.iter().map(|s| s.itc.unwrap()).collect()).collect();
        let expected_itm = reference.grid(&format!("itm_prob_{name}"));
        let itm_diff = max_diff(&itm, &expected_itm);
        let itc_diff = max_diff(&itc, &expected_itc);

        eprintln!("[{name}] filter: max |P diff| {itm_diff:e}, max |ITC diff| {itc_diff:e}");
        assert!(itm_diff <= REFERENCE_TOLERANCE, "[{name}] filter ITM differs by {itm_diff}");
        assert!(itc_diff <= REFERENCE_TOLERANCE, "[{name}] filter ITC differs by {itc_diff}");
        assert_keep_follows_threshold(&scores, &expected_itm, 0.5);
    }
}

/// Checks that `keep` is P(match) >= threshold. The fixture has pairs on both sides of 0.5, so
/// a constant result fails.
fn assert_keep_follows_threshold(scores: &[Vec<TextScore>], expected: &[Vec<f32>], threshold: f32) {
    let pairs = scores.iter().flatten().zip(expected.iter().flatten());
    let mut kept_count = 0;

    for (score, &p) in pairs {
        assert!((p - threshold).abs() > REFERENCE_TOLERANCE, "reference value {p} too close to the threshold to test");
        assert_eq!(score.keep, p >= threshold, "keep for P = {p}");
        kept_count += usize::from(score.keep);
    }

    let total = scores.iter().map(Vec::len).sum::<usize>();
    assert!(kept_count > 0, "expected some kept pairs, kept {kept_count} of {total}");
    assert!(kept_count < total, "expected some dropped pairs, kept {kept_count} of {total}");
}

#[test]
fn uneven_caption_lists_map_to_images() {
    let reference = reference();
    let raw = reference.raw_texts();
    // Image 0 gets texts 4 and 0, image 1 none, image 2 texts 1, 2 and 3.
    let texts = vec![vec![raw[4].clone(), raw[0].clone()], vec![], vec![raw[1].clone(), raw[2].clone(), raw[3].clone()]];
    let expected = reference.grid("itm_prob_enc");

    let scores = filter(FirstToken::Enc).score_pixels(&reference.pixel_values, &texts).unwrap();

    let picks = [vec![4, 0], vec![], vec![1, 2, 3]];
    assert_eq!(scores.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 0, 3]);
    for (image, columns) in picks.iter().enumerate() {
        for (slot, &column) in columns.iter().enumerate() {
            let diff = (scores[image][slot].itm - expected[image][column]).abs();
            assert!(diff <= REFERENCE_TOLERANCE, "image {image} text {column}: off by {diff}");
            assert_eq!(scores[image][slot].cleaned, reference.texts()[column]["pre_caption"].as_str().unwrap());
        }
    }
}

#[test]
fn caption_lists_pair_with_images() {
    let reference = reference();
    let filter = filter(FirstToken::Enc);
    let none: Vec<Vec<&str>> = vec![vec![]; reference.images()];

    let scores = filter.score_pixels(&reference.pixel_values, &none).unwrap();
    let too_few = filter.score_pixels(&reference.pixel_values, &none[1..]);

    assert_eq!(scores, vec![Vec::<TextScore>::new(); reference.images()], "no captions, no scores");
    assert!(too_few.is_err(), "fewer caption lists than images");
}

#[test]
fn batched_row_equals_row_alone() {
    let reference = reference();
    let model = itm_model();
    let image_embeds = model.encode_images(&reference.pixel_values).unwrap();
    let texts = reference.texts().len();
    let (ids, image_index) = all_pairs(&reference.input_ids(ENC), reference.images());
    let (mask, _) = all_pairs(&reference.attention_mask(), reference.images());

    let batched_itm = model.itm_probabilities(&image_embeds, &ids, &mask, &image_index).unwrap();
    let batched_itc = model.itc_cosines(&image_embeds, &ids, &mask, &image_index).unwrap();

    let (mut worst_itm, mut worst_itc) = (0.0f32, 0.0f32);
    for (row, &image) in image_index.iter().enumerate() {
        let (alone_itm, alone_itc) = score_alone(&model, &image_embeds, &reference, image as usize, row % texts);
        worst_itm = worst_itm.max((alone_itm - batched_itm[row]).abs());
        worst_itc = worst_itc.max((alone_itc - batched_itc[row]).abs());
    }

    let single_reference = max_diff(&to_grid(batched_itm, texts), &reference.json_grid("enc", "itm_prob_single"));
    eprintln!("batch vs alone: ITM {worst_itm:e}, ITC {worst_itc:e}; batched vs transformers single {single_reference:e}");
    assert!(worst_itm <= BATCH_TOLERANCE, "ITM batch vs alone differs by {worst_itm}");
    assert!(worst_itc <= BATCH_TOLERANCE, "ITC batch vs alone differs by {worst_itc}");
    assert!(single_reference <= REFERENCE_TOLERANCE);
}

/// Scores one pair in its own forward pass, with the image alone and the text unpadded.
fn score_alone(model: &ItmModel, image_embeds: &Tensor, reference: &Reference, image: usize, text: usize) -> (f32, f32) {
    let mut ids: Vec<u32> = serde_json::from_value(reference.texts()[text]["unpadded_input_ids"].clone()).unwrap();
    ids[0] = ENC;
    let tokens = ids.len();
    let ids = Tensor::from_vec(ids, (1, tokens), &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, tokens), DType::U32, &Device::Cpu).unwrap();
    let embeds = image_embeds.narrow(0, image, 1).unwrap();

    let itm = model.itm_probabilities(&embeds, &ids, &mask, &[0]).unwrap();
    let itc = model.itc_cosines(&embeds, &ids, &mask, &[0]).unwrap();
    (itm[0], itc[0])
}

#[test]
fn captioning_checkpoint_rejected_naming_itm_head() {
    let files = CheckpointFiles::in_dir(&fixtures().join("models/blip-tiny-captioning")).unwrap();

    let error = match Filter::load(&files, FilterSettings::default(), &Device::Cpu, DType::F32) {
        Ok(_) => panic!("a captioning checkpoint loaded as an ITM model"),
        Err(error) => error.to_string(),
    };

    assert!(error.contains("itm_head.weight"), "error does not name the missing tensor: {error}");
}

#[test]
fn mismatched_image_index_rejected() {
    let reference = reference();
    let model = itm_model();
    let image_embeds = model.encode_images(&reference.pixel_values.narrow(0, 0, 1).unwrap()).unwrap();
    let ids = reference.input_ids(ENC).narrow(0, 0, 2).unwrap();
    let mask = reference.attention_mask().narrow(0, 0, 2).unwrap();

    assert!(model.itm_probabilities(&image_embeds, &ids, &mask, &[0]).is_err(), "too few indices");
    assert!(model.itm_probabilities(&image_embeds, &ids, &mask, &[0, 1]).is_err(), "index past the last image");
}
