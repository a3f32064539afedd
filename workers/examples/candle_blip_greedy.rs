//! Baseline for `benches/model_stage.py`: greedy captioning with the BLIP model that ships in
//! candle-transformers (`candle_transformers::models::blip`), one image at a time, as candle's
//! own BLIP example does it. It prints JSON with the token ids and wall times.
//!
//! ```text
//! cargo run -p capfilt-workers --example candle_blip_greedy -- \
//!     --model DIR --pixels FILE.safetensors [--max-length 20] [--repeat N]
//! ```
//!
//! `FILE.safetensors` contains `pixel_values` `[N, 3, S, S]`, as for the `generate_tokens` example.
//! Decoding starts from `[DEC]` alone and stops at `[SEP]` or after `--max-length` tokens, prompt
//! included, which is transformers' greedy `generate(max_length=...)` without a prompt. Every
//! run goes through all images; a first, untimed run of the first image warms the memory-mapped
//! weights up.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::blip;
use serde_json::json;

const USAGE: &str = "usage: candle_blip_greedy --model DIR --pixels FILE.safetensors [--max-length N] [--repeat N]";

/// `[DEC]`, the first decoder token of BLIP captions.
const DEC_TOKEN: u32 = 30522;
/// `[SEP]`, the end token.
const SEP_TOKEN: u32 = 102;

struct Args {
    model: PathBuf,
    pixels: PathBuf,
    max_length: usize,
    repeat: usize,
}

fn parse_args() -> Result<Args> {
    let mut model = None;
    let mut pixels = None;
    let mut max_length = 20;
    let mut repeat = 1;

    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--model" => model = Some(PathBuf::from(value)),
            "--pixels" => pixels = Some(PathBuf::from(value)),
            "--max-length" => max_length = value.parse().context("--max-length")?,
            "--repeat" => repeat = value.parse::<usize>().context("--repeat")?.max(1),
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(Args {
        model: model.with_context(|| format!("--model is required\n{USAGE}"))?,
        pixels: pixels.with_context(|| format!("--pixels is required\n{USAGE}"))?,
        max_length,
        repeat,
    })
}

/// Loads the model. Checkpoints written by transformers tie the LM head to the word embeddings
/// and leave `cls.predictions.decoder.weight` out, so that name is mapped onto the embeddings.
fn load_model(dir: &Path) -> Result<blip::BlipForConditionalGeneration> {
    let config_text = std::fs::read_to_string(dir.join("config.json")).context("reading config.json")?;
    let config: blip::Config = serde_json::from_str(&config_text).context("parsing config.json")?;

    let weights = dir.join("model.safetensors");
    // SAFETY: the weights are mapped read-only and nothing writes to the file while it is open.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu)? };
    let vb = vb.rename_f(|name| {
        if name == "text_decoder.cls.predictions.decoder.weight" {
            "text_decoder.bert.embeddings.word_embeddings.weight".to_string()
        } else {
            name.to_string()
        }
    });
    Ok(blip::BlipForConditionalGeneration::new(&config, vb)?)
}

/// Greedy decoding of one image `[1, 3, S, S]`: the whole prefix on the first step, then one
/// token per step against the self-attention cache.
fn caption(model: &mut blip::BlipForConditionalGeneration, image: &Tensor, max_length: usize) -> Result<Vec<u32>> {
    model.reset_kv_cache();
    let image_embeds = model.vision_model().forward(image)?;

    let mut tokens = vec![DEC_TOKEN];
    while tokens.len() < max_length {
        let fed = if tokens.len() == 1 { &tokens[..] } else { &tokens[tokens.len() - 1..] };
        let input_ids = Tensor::new(fed, image.device())?.unsqueeze(0)?;
        let logits = model.text_decoder().forward(&input_ids, &image_embeds)?;
        let last = logits.i((0, fed.len() - 1))?;
        let token = last.argmax(0)?.to_scalar::<u32>()?;

        tokens.push(token);
        if token == SEP_TOKEN {
            break;
        }
    }
    Ok(tokens)
}

fn run() -> Result<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let mut model = load_model(&args.model)?;
    let load_seconds = start.elapsed().as_secs_f64();

    let pixels = candle_core::safetensors::load(&args.pixels, &Device::Cpu)?
        .remove("pixel_values")
        .context("no pixel_values tensor")?
        .to_dtype(DType::F32)?;
    let images = pixels.dim(0)?;

    caption(&mut model, &pixels.narrow(0, 0, 1)?, args.max_length)?;

    let mut times = Vec::with_capacity(args.repeat);
    let mut sequences = Vec::new();
    for _ in 0..args.repeat {
        let started = Instant::now();
        sequences = (0..images)
            .map(|i| caption(&mut model, &pixels.narrow(0, i, 1)?, args.max_length))
            .collect::<Result<Vec<_>>>()?;
        times.push(started.elapsed().as_secs_f64());
    }

    let output = json!({
        "images": images,
        "max_length": args.max_length,
        "load_seconds": load_seconds,
        "seconds_per_run": times,
        "sequences": sequences,
    });
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("candle_blip_greedy: {error:#}");
            ExitCode::FAILURE
        }
    }
}
