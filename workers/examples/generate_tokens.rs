//! Runs capfilt's captioner on preprocessed pixel values and prints the generated token ids as
//! JSON, for comparison with transformers' `generate()` (see `tests/fixtures/compare_large.py`
//! and `docs/model-parity.md`).
//!
//! ```text
//! cargo run -p capfilt-workers --example generate_tokens -- \
//!     --model DIR --pixels FILE.safetensors --decoding greedy|beam \
//!     [--num-beams 3] [--max-length 20] [--min-length 5] [--prompt "a picture of "] \
//!     [--mode both|batched|single|encoder] [--repeat N] [--batch-size N]
//!     [--device cpu|cuda] [--dtype f32|bf16|f16] [--dump OUT.safetensors]
//! ```
//!
//! `FILE.safetensors` must hold a float tensor `pixel_values` of shape `[N, 3, S, S]` (or
//! `[3, S, S]` for one image), already preprocessed as BLIP's image processor does. The batch is
//! captioned in one call (`batched`) and then one image per call (`single`). The JSON on stdout
//! has the token ids of every sequence, the prompt included and the final `[SEP]` included when
//! the model emitted it, and the wall time of each call. The model runs in float32 on the CPU
//! unless `--device cuda` (a build with the `cuda` feature) and `--dtype` select another device
//! and type.
//! Options not given keep `CaptionSettings::default()`, so greedy decoding also gets
//! `--min-length 5` and the prompt unless `--min-length 0` and `--prompt ""` are passed.
//!
//! With `--dump`, the vision encoder output (`vision_last_hidden_state`, `[N, tokens, width]`) and
//! the decoder logits for the first position after the prompt (`first_step_logits`, `[N, vocab]`)
//! are also written to `OUT.safetensors`, for a numeric comparison.
//!
//! With `--repeat N` above 1 (for benchmarks, `benches/model_stage.py`), the batched call first
//! runs once on the first image untimed, so page faults on the memory-mapped weights and the
//! allocator's first growth are not counted. Then it runs N times timed, and
//! `batched.seconds_per_run` lists the times.
//!
//! `--mode encoder` times the image encoder alone on the whole batch (`encoder.seconds_per_run`,
//! after the same warm-up), so that a benchmark can split a call into encoding and decoding.
//!
//! `--batch-size N` splits the batched call into calls of at most N images, as `capfilt run`
//! batches a longer list. A run's time is then the sum over its calls.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use capfilt_workers::blip::{CheckpointFiles, Sequence};
use capfilt_workers::{CaptionSettings, Captioner, Decoding};
use serde_json::{json, Value};

const USAGE: &str =
    "usage: generate_tokens --model DIR --pixels FILE.safetensors --decoding greedy|beam \
[--num-beams N] [--max-length N] [--min-length N] [--prompt TEXT] [--mode both|batched|single|encoder] \
[--repeat N] [--batch-size N] [--device cpu|cuda] [--dtype f32|bf16|f16] [--dump OUT.safetensors]";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Both,
    Batched,
    Single,
    Encoder,
}

struct Args {
    model: PathBuf,
    pixels: PathBuf,
    settings: CaptionSettings,
    mode: Mode,
    repeat: usize,
    batch_size: Option<usize>,
    device: Device,
    dtype: DType,
    dump: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut model = None;
    let mut pixels = None;
    let mut decoding = None;
    let mut mode = Mode::Both;
    let mut repeat = 1;
    let mut batch_size = None;
    let mut device = Device::Cpu;
    let mut dtype = DType::F32;
    let mut dump = None;
    // Options not given keep the library defaults (3 beams, max 20, min 5, prompt "a picture of "),
    // with greedy decoding too, where transformers' own default min_length is 0.
    let mut settings = CaptionSettings::default();

    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = |v: &str| {
            v.parse::<usize>()
                .with_context(|| format!("{flag}: not a whole number: {v:?}"))
        };
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--pixels" => pixels = Some(PathBuf::from(value)),
            "--decoding" => {
                decoding = Some(match value.as_str() {
                    "greedy" => Decoding::Greedy,
                    "beam" => Decoding::Beam,
                    other => bail!("invalid --decoding {other:?}: expected greedy or beam"),
                })
            }
            "--num-beams" => settings.num_beams = number(&value)?,
            "--max-length" => settings.max_length = number(&value)?,
            "--min-length" => settings.min_length = number(&value)?,
            "--prompt" => settings.prompt = value,
            "--mode" => {
                mode = match value.as_str() {
                    "both" => Mode::Both,
                    "batched" => Mode::Batched,
                    "single" => Mode::Single,
                    "encoder" => Mode::Encoder,
                    other => bail!("invalid --mode {other:?}: expected both, batched, single or encoder"),
                }
            }
            "--repeat" => repeat = number(&value)?.max(1),
            "--batch-size" => batch_size = Some(number(&value)?.max(1)),
            "--device" => {
                device = match value.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::new_cuda(0).context("--device cuda needs a build with the cuda feature")?,
                    other => bail!("invalid --device {other:?}: expected cpu or cuda"),
                }
            }
            "--dtype" => {
                dtype = match value.as_str() {
                    "f32" => DType::F32,
                    "bf16" => DType::BF16,
                    "f16" => DType::F16,
                    other => bail!("invalid --dtype {other:?}: expected f32, bf16 or f16"),
                }
            }
            "--dump" => dump = Some(PathBuf::from(value)),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }

    settings.decoding = decoding.with_context(|| format!("--decoding is required\n{USAGE}"))?;
    if settings.decoding == Decoding::Greedy {
        settings.num_beams = 1;
    }
    Ok(Args {
        model: model.with_context(|| format!("--model is required\n{USAGE}"))?,
        pixels: pixels.with_context(|| format!("--pixels is required\n{USAGE}"))?,
        settings,
        mode,
        repeat,
        batch_size,
        device,
        dtype,
        dump,
    })
}

fn read_pixels(path: &PathBuf, device: &Device, dtype: DType) -> Result<Tensor> {
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))?;
    let pixels = tensors
        .remove("pixel_values")
        .with_context(|| format!("{} has no tensor named pixel_values", path.display()))?;
    let pixels = match pixels.rank() {
        3 => pixels.unsqueeze(0)?,
        4 => pixels,
        _ => bail!(
            "invalid pixel_values shape {:?}: expected [N, 3, S, S] or [3, S, S]",
            pixels.dims()
        ),
    };
    Ok(pixels.to_device(device)?.to_dtype(dtype)?)
}

fn sequence_json(sequence: &Sequence) -> Value {
    json!({
        "tokens": sequence.tokens,
        "stop": sequence.stop.as_str(),
        "score": sequence.score,
    })
}

/// Runs one `generate` call and returns the first sequence of every image with the elapsed time.
fn timed_generate(captioner: &Captioner, pixels: &Tensor) -> Result<(Vec<Value>, f64)> {
    let start = Instant::now();
    let sequences = captioner.generate(pixels, &[])?;
    let seconds = start.elapsed().as_secs_f64();
    let rows = sequences
        .iter()
        .map(|per_image| sequence_json(&per_image[0]))
        .collect();
    Ok((rows, seconds))
}

/// Captions `pixels` in calls of at most `batch_size` images (all at once without one).
fn timed_batches(captioner: &Captioner, pixels: &Tensor, batch_size: Option<usize>) -> Result<(Vec<Value>, f64)> {
    let images = pixels.dim(0)?;
    let batch_size = batch_size.unwrap_or(images);

    let (mut rows, mut seconds) = (Vec::with_capacity(images), 0.0);
    for start in (0..images).step_by(batch_size) {
        let batch = pixels.narrow(0, start, batch_size.min(images - start))?;
        let (batch_rows, batch_seconds) = timed_generate(captioner, &batch)?;
        rows.extend(batch_rows);
        seconds += batch_seconds;
    }
    Ok((rows, seconds))
}

/// Runs the batched call `repeat` times. With more than one run, a warm-up call on the first
/// image comes first, untimed. `seconds` is the first timed run, as before `--repeat` existed.
fn batched_runs(captioner: &Captioner, pixels: &Tensor, repeat: usize, batch_size: Option<usize>) -> Result<Value> {
    if repeat > 1 {
        captioner.generate(&pixels.narrow(0, 0, 1)?, &[])?;
    }

    let mut times = Vec::with_capacity(repeat);
    let mut sequences = Vec::new();
    for _ in 0..repeat {
        let (rows, seconds) = timed_batches(captioner, pixels, batch_size)?;
        times.push(seconds);
        sequences = rows;
    }
    Ok(json!({ "seconds": times[0], "seconds_per_run": times, "sequences": sequences }))
}

/// Times the image encoder on the whole batch `repeat` times, after one untimed image.
fn encoder_runs(captioner: &Captioner, pixels: &Tensor, repeat: usize) -> Result<Value> {
    captioner.encode_images(&pixels.narrow(0, 0, 1)?)?;

    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let start = Instant::now();
        captioner.encode_images(pixels)?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(json!({ "seconds_per_run": times }))
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let settings = args.settings.clone();

    let start = Instant::now();
    let files = CheckpointFiles::in_dir(&args.model)?;
    let captioner = Captioner::load(&files, args.settings, &args.device, args.dtype)?;
    let load_seconds = start.elapsed().as_secs_f64();

    let pixels = read_pixels(&args.pixels, &args.device, args.dtype)?;
    let size = captioner.image_size();
    if pixels.dim(1)? != 3 || pixels.dim(2)? != size || pixels.dim(3)? != size {
        bail!(
            "invalid pixel_values shape {:?}: the model expects [N, 3, {size}, {size}]",
            pixels.dims()
        );
    }
    let images = pixels.dim(0)?;

    let mut output = json!({
        "model": args.model.display().to_string(),
        "pixels": args.pixels.display().to_string(),
        "images": images,
        "settings": {
            "decoding": settings.decoding,
            "num_beams": settings.num_beams,
            "max_length": settings.max_length,
            "min_length": settings.min_length,
            "prompt": settings.prompt,
        },
        "prompt_ids": captioner.prompt_ids(),
        "device": if args.device.is_cuda() { "cuda" } else { "cpu" },
        "dtype": args.dtype.as_str(),
        "load_seconds": load_seconds,
    });

    if args.mode == Mode::Encoder {
        output["encoder"] = encoder_runs(&captioner, &pixels, args.repeat)?;
        println!("{}", serde_json::to_string_pretty(&output)?);
        return Ok(());
    }
    if args.mode != Mode::Single {
        output["batched"] = batched_runs(&captioner, &pixels, args.repeat, args.batch_size)?;
    }
    if args.mode != Mode::Batched {
        let mut sequences = Vec::with_capacity(images);
        let mut times = Vec::with_capacity(images);
        for image in 0..images {
            let (mut rows, seconds) = timed_generate(&captioner, &pixels.narrow(0, image, 1)?)?;
            sequences.push(rows.remove(0));
            times.push(seconds);
        }
        let total: f64 = times.iter().sum();
        output["single"] =
            json!({ "seconds": total, "seconds_per_call": times, "sequences": sequences });
    }

    if let Some(path) = &args.dump {
        let tensors = HashMap::from([
            (
                "vision_last_hidden_state",
                captioner.encode_images(&pixels)?,
            ),
            ("first_step_logits", captioner.first_step_logits(&pixels)?),
        ]);
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("writing {}", path.display()))?;
        output["dump"] = json!(path.display().to_string());
    }

    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

fn main() -> ExitCode {
    // The same allocator settings as the capfilt binary, so the timings are the product's.
    capfilt_workers::allocator::tune_for_inference();

    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("generate_tokens: {error:#}");
            ExitCode::FAILURE
        }
    }
}
