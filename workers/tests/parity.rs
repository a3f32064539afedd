//! Reference parity: the tiny random-weight BLIP captioner in `tests/fixtures` run through
//! capfilt gives the same tokens as transformers' `generate()` and matching intermediate tensors.
//! The fixtures come from `tests/fixtures/generate.py`.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use capfilt_workers::blip::CheckpointFiles;
use capfilt_workers::{CaptionSettings, Captioner, Decoding};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn reference() -> (Value, std::collections::HashMap<String, Tensor>) {
    let json = std::fs::read_to_string(fixtures().join("reference/captioning.json")).unwrap();
    let tensors = candle_core::safetensors::load(fixtures().join("reference/captioning.safetensors"), &Device::Cpu).unwrap();
    (serde_json::from_str(&json).unwrap(), tensors)
}

fn captioner(settings: CaptionSettings) -> Captioner {
    let files = CheckpointFiles::in_dir(&fixtures().join("models/blip-tiny-captioning")).unwrap();
    Captioner::load(&files, settings, &Device::Cpu, DType::F32).unwrap()
}

/// Decoding settings equivalent to a case's `generate()` keyword arguments.
fn settings_for(case: &Value) -> CaptionSettings {
    let kwargs = &case["generate_kwargs"];
    let num_beams = kwargs["num_beams"].as_u64().unwrap_or(1) as usize;
    CaptionSettings {
        decoding: if num_beams > 1 { Decoding::Beam } else { Decoding::Greedy },
        num_beams,
        max_length: kwargs["max_length"].as_u64().unwrap() as usize,
        min_length: kwargs["min_length"].as_u64().unwrap_or(0) as usize,
        repetition_penalty: kwargs["repetition_penalty"].as_f64().unwrap_or(1.0) as f32,
        length_penalty: kwargs["length_penalty"].as_f64().unwrap_or(1.0) as f32,
        early_stopping: kwargs["early_stopping"].as_bool().unwrap_or(false),
        prompt: case["prompt"].as_str().unwrap_or("").to_string(),
        ..CaptionSettings::default()
    }
}

fn ids(value: &Value) -> Vec<Vec<u32>> {
    value.as_array().unwrap().iter().map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()).collect()
}

/// Cuts a reference row at its first `[SEP]`. transformers pads finished rows of a batch with
/// `[PAD]` (0) in greedy decoding and with `[SEP]` (102) in beam search, but capfilt returns
/// each row unpadded.
fn strip_padding(mut tokens: Vec<u32>) -> Vec<u32> {
    if let Some(end) = tokens.iter().position(|&t| t == 102) {
        tokens.truncate(end + 1);
    }
    while tokens.len() > 1 && tokens.last() == Some(&0) {
        tokens.pop();
    }
    tokens
}

#[test]
fn tokens_match_transformers_generate() {
    let (reference, tensors) = reference();
    let pixel_values = &tensors["pixel_values"];
    let images = pixel_values.dim(0).unwrap();

    for (name, case) in reference["cases"].as_object().unwrap() {
        let captioner = captioner(settings_for(case));
        assert_eq!(captioner.prompt_ids(), ids(&Value::Array(vec![case["decoder_prompt_ids"].clone()]))[0], "{name}: prompt ids");

        let batched: Vec<Vec<u32>> = captioner.generate(pixel_values, &[]).unwrap().into_iter().map(|s| s[0].tokens.clone()).collect();
        let expected: Vec<Vec<u32>> = ids(&case["batched_output_ids"]).into_iter().map(strip_padding).collect();
        assert_eq!(batched, expected, "{name}: batched tokens");

        for image in 0..images {
            let single = captioner.generate(&pixel_values.narrow(0, image, 1).unwrap(), &[]).unwrap();
            let expected = &ids(&case["single_output_ids"])[image];
            assert_eq!(&single[0][0].tokens, expected, "{name}: image {image} alone");
        }
    }
}

#[test]
fn prompt_removed_from_caption_text() {
    let (reference, tensors) = reference();
    let case = &reference["cases"]["b_greedy_prompt"];
    let captioner = captioner(settings_for(case));

    let captions = captioner.caption(&tensors["pixel_values"], &[]).unwrap();

    for (caption, full) in captions.iter().map(|c| &c[0]).zip(case["single_text"].as_array().unwrap()) {
        let full = full.as_str().unwrap();
        assert!(full.starts_with("a picture of"), "reference text keeps the prompt: {full}");
        assert_eq!(caption.text, full.trim_start_matches("a picture of").trim(), "caption text without the prompt");
    }
}

#[test]
fn intermediate_tensors_match() {
    let (reference, tensors) = reference();
    let case = &reference["cases"]["a_greedy_noprompt"];
    let captioner = captioner(settings_for(case));
    let pixel_values = &tensors["pixel_values"];

    let vision = captioner.encode_images(&pixel_values.narrow(0, 0, 1).unwrap()).unwrap().squeeze(0).unwrap();
    let vision_diff = max_abs_diff(&vision, &tensors["vision_last_hidden_state_0"]);
    assert!(vision_diff < 1e-4, "vision encoder output differs by {vision_diff}");

    let logits = captioner.first_step_logits(pixel_values).unwrap();
    let logits_diff = max_abs_diff(&logits, &tensors["first_step_logits"]);
    assert!(logits_diff < 1e-3, "first decoding step logits differ by {logits_diff}");
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn sampling_settings(num_captions: usize, seed: u64) -> CaptionSettings {
    CaptionSettings {
        decoding: Decoding::Sample,
        num_captions,
        top_p: 0.9,
        repetition_penalty: 1.1,
        seed,
        min_length: 5,
        ..CaptionSettings::default()
    }
}

#[test]
fn sampling_is_seeded_and_batch_independent() {
    let (_, tensors) = reference();
    let pixel_values = &tensors["pixel_values"];
    let captioner = captioner(sampling_settings(3, 1));
    let seeds = [11u64, 12, 13];

    let batched = captioner.generate(pixel_values, &seeds).unwrap();
    let again = captioner.generate(pixel_values, &seeds).unwrap();
    assert_eq!(batched, again, "same seeds, same samples");
    assert!(batched.iter().all(|per_image| per_image.len() == 3), "three samples per image");

    for image in 0..3 {
        let alone = captioner.generate(&pixel_values.narrow(0, image, 1).unwrap(), &seeds[image..=image]).unwrap();
        assert_eq!(alone[0], batched[image], "image {image} sampled alone equals its row in the batch");
    }

    let other_seeds = captioner.generate(pixel_values, &[21, 22, 23]).unwrap();
    assert_ne!(batched, other_seeds, "other seeds draw other captions");
    let distinct: std::collections::HashSet<_> = batched.iter().flatten().map(|s| s.tokens.clone()).collect();
    assert!(distinct.len() > 3, "samples of one image differ: {distinct:?}");
}

#[test]
fn mixed_prompt_lengths_match_rows_alone() {
    let (_, tensors) = reference();
    let pixel_values = &tensors["pixel_values"];
    let prompts = vec![Some("a picture of ".to_string()), Some(String::new()), Some("a close up photograph of a very large".to_string())];
    let seeds = [5u64, 6, 7];

    for decoding in [Decoding::Greedy, Decoding::Beam, Decoding::Sample] {
        let settings = CaptionSettings { decoding, num_captions: 2, min_length: 5, ..CaptionSettings::default() };
        let captioner = captioner(settings);

        let batched = captioner.generate_with_prompts(pixel_values, &seeds, &prompts).unwrap();

        for image in 0..3 {
            let alone = captioner
                .generate_with_prompts(&pixel_values.narrow(0, image, 1).unwrap(), &seeds[image..=image], &prompts[image..=image])
                .unwrap();
            for (single, in_batch) in alone[0].iter().zip(&batched[image]) {
                assert_eq!(single.tokens, in_batch.tokens, "{decoding:?}: image {image} with its own prompt length, alone vs batched");
                assert_eq!(single.stop, in_batch.stop);
                let score_gap = (single.score.unwrap_or(0.0) - in_batch.score.unwrap_or(0.0)).abs();
                assert!(score_gap < 1e-4, "{decoding:?}: image {image} beam score differs by {score_gap}");
            }
        }
        assert!(batched.iter().all(|s| s[0].tokens[0] == 30522), "every row starts with [DEC]");
        assert!(batched.iter().flatten().all(|s| !s.tokens.contains(&0)), "no [PAD] leaks into a returned sequence");
    }
}

#[test]
fn stop_reasons_recorded() {
    let (reference, tensors) = reference();
    let case = &reference["cases"]["a_greedy_noprompt"];
    let captioner = captioner(settings_for(case));

    let sequences = captioner.generate(&tensors["pixel_values"], &[]).unwrap();

    for (image, expected) in ids(&case["single_output_ids"]).iter().enumerate() {
        let sequence = &sequences[image][0];
        if expected.last() == Some(&102) {
            assert_eq!(sequence.stop, capfilt_workers::blip::StopReason::EndToken, "image {image} ended with [SEP]");
        } else {
            assert_eq!(expected.len(), 20, "a reference row without [SEP] runs to max_length");
            assert_eq!(sequence.stop, capfilt_workers::blip::StopReason::MaxLength, "image {image} never emitted [SEP]");
        }
    }
    assert!(sequences.iter().any(|s| s[0].stop == capfilt_workers::blip::StopReason::MaxLength), "the fixture has a row that never ends");
}

#[test]
fn prompt_filling_max_length_returns_prompt() {
    let (_, tensors) = reference();
    let settings = CaptionSettings { decoding: Decoding::Greedy, max_length: 6, min_length: 0, ..CaptionSettings::default() };
    let captioner = captioner(settings);
    let long_prompt = Some("one two three four five six seven".to_string());

    let sequences = captioner.generate_with_prompts(&tensors["pixel_values"], &[1, 2, 3], &[long_prompt, None, None]).unwrap();

    assert_eq!(sequences[0][0].stop, capfilt_workers::blip::StopReason::MaxLength);
    assert_eq!(sequences[0][0].tokens.len(), 8, "[DEC] and seven words, nothing generated");
    assert!(sequences[1][0].tokens.len() <= 6);
}
