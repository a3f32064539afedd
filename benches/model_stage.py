#!/usr/bin/env python3
"""Model-stage benchmark: capfilt's captioner against transformers, side by side in one run.

    python3 tests/fixtures/generate.py --large /tmp/blip-large-bench     # random weights, ~1.8 GB
    CARGO_TARGET_DIR=... cargo build --workspace --examples
    python3 benches/model_stage.py --model /tmp/blip-large-bench --bin-dir /tmp/capfilt-bench-bin

Both sides get the same preprocessed images (BlipImageProcessorPil on the committed photos and
their mirror images), the same settings and the same thread count, in float32 on the CPU:

  beam:   batch of all images, num_beams=3, max_length=20, min_length=5, prompt "a picture of "
  greedy: batch of all images, num_beams=1, max_length=20, no prompt

For each case transformers runs a one-image warm-up call and then --repeat timed calls in this
process; capfilt runs the `generate_tokens` example with --repeat (which warms up the same way).
The stock candle-transformers BLIP (`candle_blip_greedy` example, one image at a time) runs the
greedy case as a baseline. Token ids are compared with transformers' after its padding is
removed. Images per second come from the median call time. Model loading is not timed.

The encoder case times the image encoder alone on the same batch (transformers' `vision_model`,
capfilt's `generate_tokens --mode encoder`). Subtracting it from a case's time splits that case
into encoding and decoding, which shows where each side spends its time.

Absolute times on a shared machine are noise; the ratios between the sides are the result.

--device cuda --dtype bf16 runs both sides on the GPU (capfilt built with the cuda feature; see
benches/gpu.sh). In bfloat16 the two implementations round differently, so token ids are then
compared sequence by sequence and only counted, not expected to be identical.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "fixtures"))
sys.path.insert(0, str(REPO / "benches"))

from compare_large import decoder_prompt, strip_padding  # noqa: E402
from machine import machine_info  # noqa: E402

PHOTOS = ["astronaut.jpg", "chelsea.png", "coffee.webp", "camera-small.png"]
DEC_ID = 30522
# --device and --dtype for the Rust examples, set from the command line in main().
DEVICE_ARGS = []

TORCH_DTYPES = {"f32": None, "bf16": None, "f16": None}

CASES = {
    "beam": dict(num_beams=3, max_length=20, min_length=5, prompt="a picture of "),
    "greedy": dict(num_beams=1, max_length=20, min_length=0, prompt=""),
}


def log(message):
    print(message, file=sys.stderr, flush=True)


def pixel_batch(model_dir, count):
    """Preprocesses `count` distinct images: the photos, then their mirror images, then repeats."""
    from PIL import Image, ImageOps
    from transformers import BlipImageProcessorPil

    processor = BlipImageProcessorPil.from_pretrained(str(model_dir))
    rows = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        with Image.open(REPO / "tests" / "fixtures" / "photos" / name) as img:
            img = img.convert("RGB")
            # Mirrored copies give the second round different pixels, so no two images share work.
            if (i // len(PHOTOS)) % 2 == 1:
                img = ImageOps.mirror(img)
            rows.append(processor(images=img, return_tensors="np")["pixel_values"][0].astype(np.float32))
    return np.stack(rows)


def hf_call(model, pixel_values, prompt_ids, case):
    import torch

    if prompt_ids is not None:
        prompt_ids = prompt_ids.to(pixel_values.device)
    kwargs = dict(do_sample=False, num_beams=case["num_beams"], max_length=case["max_length"])
    if case["min_length"]:
        kwargs["min_length"] = case["min_length"]
    # BLIP's generate writes into input_ids in place, so every call gets a fresh copy.
    input_ids = None if prompt_ids is None else prompt_ids.repeat(pixel_values.shape[0], 1).clone()

    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(pixel_values=pixel_values, input_ids=input_ids, **kwargs)
    out = out.cpu()
    seconds = time.perf_counter() - start
    return [strip_padding(row) for row in out.tolist()], seconds


def run_hf(model, pixel_values, prompt_ids, case, repeat):
    hf_call(model, pixel_values[:1], prompt_ids, case)

    times, tokens = [], None
    for _ in range(repeat):
        tokens, seconds = hf_call(model, pixel_values, prompt_ids, case)
        times.append(seconds)
    return {"seconds_per_run": times, "sequences": tokens}


def rust_env(threads):
    env = dict(os.environ)
    # candle's CPU kernels size their pools from RAYON_NUM_THREADS.
    env["RAYON_NUM_THREADS"] = str(threads)
    return env


def run_rust(binary, args, threads):
    out = subprocess.run([str(binary), *args, *DEVICE_ARGS], check=True, capture_output=True, text=True, env=rust_env(threads))
    return json.loads(out.stdout)


def run_capfilt(bin_dir, model_dir, pixels_path, case, repeat, threads):
    decoding = "beam" if case["num_beams"] > 1 else "greedy"
    args = [
        "--model", str(model_dir), "--pixels", str(pixels_path), "--decoding", decoding,
        "--num-beams", str(case["num_beams"]), "--max-length", str(case["max_length"]),
        "--min-length", str(case["min_length"]), "--prompt", case["prompt"],
        "--mode", "batched", "--repeat", str(repeat),
    ]
    result = run_rust(Path(bin_dir) / "generate_tokens", args, threads)["batched"]
    return {"seconds_per_run": result["seconds_per_run"], "sequences": [s["tokens"] for s in result["sequences"]]}


def run_hf_encoder(model, pixel_values, repeat):
    import torch

    with torch.no_grad():
        model.vision_model(pixel_values=pixel_values[:1])
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            model.vision_model(pixel_values=pixel_values)
            times.append(time.perf_counter() - start)
    return {"seconds_per_run": times}


def run_capfilt_encoder(bin_dir, model_dir, pixels_path, repeat, threads):
    args = ["--model", str(model_dir), "--pixels", str(pixels_path), "--decoding", "greedy", "--mode", "encoder", "--repeat", str(repeat)]
    return run_rust(Path(bin_dir) / "generate_tokens", args, threads)["encoder"]


def bench_encoder(args, model, pixel_values, pixels_path):
    import torch

    images = pixel_values.shape[0]
    pixels = torch.from_numpy(pixel_values).to(args.device, TORCH_DTYPES[args.dtype])
    sides = {
        "transformers": timed_block("encoder/transformers", lambda: run_hf_encoder(model, pixels, args.repeat)),
        "capfilt": timed_block("encoder/capfilt", lambda: run_capfilt_encoder(args.bin_dir, args.model, pixels_path, args.repeat, args.threads)),
    }
    for result in sides.values():
        summarise(result, images)
    hf_rate = sides["transformers"]["images_per_s"]
    for result in sides.values():
        result["ratio_to_transformers"] = result["images_per_s"] / hf_rate
    return {"settings": {"encoder_only": True}, "images": images, "sides": sides}


def run_candle(bin_dir, model_dir, pixels_path, case, repeat, threads):
    args = ["--model", str(model_dir), "--pixels", str(pixels_path), "--max-length", str(case["max_length"]), "--repeat", str(repeat)]
    out = subprocess.run([str(Path(bin_dir) / "candle_blip_greedy"), *args], check=True, capture_output=True, text=True, env=rust_env(threads))
    result = json.loads(out.stdout)
    return {"seconds_per_run": result["seconds_per_run"], "sequences": result["sequences"]}


def summarise(result, images):
    median = statistics.median(result["seconds_per_run"])
    result["median_seconds"] = median
    result["images_per_s"] = images / median
    return result


def timed_block(name, run):
    """Runs one side of a case and records the load average around it, since the machine is shared."""
    before = os.getloadavg()
    log(f"{name}: running (load {before[0]:.2f})")
    result = run()
    result["loadavg_before"] = list(before)
    result["loadavg_after"] = list(os.getloadavg())
    log(f"{name}: {result['seconds_per_run']}")
    return result


def bench_case(name, case, args, model, tokenizer, pixel_values, pixels_path):
    import torch

    images = pixel_values.shape[0]
    prompt_ids, _ = decoder_prompt(tokenizer, case["prompt"], DEC_ID)
    pixels = torch.from_numpy(pixel_values).to(args.device, TORCH_DTYPES[args.dtype])

    sides = {}
    sides["transformers"] = timed_block(f"{name}/transformers", lambda: run_hf(model, pixels, prompt_ids, case, args.repeat))
    sides["capfilt"] = timed_block(f"{name}/capfilt", lambda: run_capfilt(args.bin_dir, args.model, pixels_path, case, args.repeat, args.threads))
    if name == "greedy" and not args.skip_candle and args.device == "cpu":
        sides["candle-transformers"] = timed_block(f"{name}/candle", lambda: run_candle(args.bin_dir, args.model, pixels_path, case, args.repeat, args.threads))

    reference = sides["transformers"]["sequences"]
    for side, result in sides.items():
        summarise(result, images)
        result["tokens_identical"] = result["sequences"] == reference
        result["identical_sequences"] = sum(a == b for a, b in zip(result["sequences"], reference))
    hf_rate = sides["transformers"]["images_per_s"]
    for result in sides.values():
        result["ratio_to_transformers"] = result["images_per_s"] / hf_rate
    return {"settings": case, "images": images, "sides": sides}


def print_table(results):
    print(f"{'case':8} {'side':20} {'median s':>9} {'images/s':>9} {'x HF':>6} tokens")
    for name, res in results["cases"].items():
        for side, r in res["sides"].items():
            if "tokens_identical" not in r:
                same = "-"
            elif r["tokens_identical"]:
                same = "identical"
            else:
                same = f"{r['identical_sequences']}/{res['images']} identical"
            print(f"{name:8} {side:20} {r['median_seconds']:9.2f} {r['images_per_s']:9.3f} {r['ratio_to_transformers']:6.2f} {same}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("/tmp/blip-large-bench"))
    ap.add_argument("--bin-dir", type=Path, required=True, help="folder with the generate_tokens and candle_blip_greedy examples")
    ap.add_argument("--images", type=int, default=8, help="images per batch (default 8)")
    ap.add_argument("--repeat", type=int, default=2, help="timed calls per side and case (default 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every side (default: all CPUs)")
    ap.add_argument("--cases", default="beam,greedy,encoder")
    ap.add_argument("--skip-candle", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=sorted(TORCH_DTYPES), default="f32")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if (args.device, args.dtype) != ("cpu", "f32"):
        DEVICE_ARGS.extend(["--device", args.device, "--dtype", args.dtype])

    import torch
    from transformers import AutoTokenizer, BlipForConditionalGeneration

    TORCH_DTYPES.update(f32=torch.float32, bf16=torch.bfloat16, f16=torch.float16)
    torch.set_num_threads(args.threads)
    info = machine_info()
    info["torch"] = torch.__version__
    info["threads"] = args.threads
    info["device"], info["dtype"] = args.device, args.dtype

    pixel_values = pixel_batch(args.model, args.images)
    model = BlipForConditionalGeneration.from_pretrained(str(args.model)).eval().to(args.device, TORCH_DTYPES[args.dtype])
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))

    results = {"machine": info, "repeat": args.repeat, "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        from safetensors.numpy import save_file

        pixels_path = Path(tmp) / "pixels.safetensors"
        save_file({"pixel_values": pixel_values}, str(pixels_path))
        for name in args.cases.split(","):
            if name == "encoder":
                results["cases"][name] = bench_encoder(args, model, pixel_values, pixels_path)
            else:
                results["cases"][name] = bench_case(name, CASES[name], args, model, tokenizer, pixel_values, pixels_path)

    results["machine"]["loadavg_end"] = list(os.getloadavg())
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
