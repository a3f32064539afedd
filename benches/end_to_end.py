#!/usr/bin/env python3
"""End-to-end benchmark: `capfilt run` over a URL list against the model stage alone.

    python3 tests/fixtures/generate.py --large /tmp/blip-large-bench
    CARGO_TARGET_DIR=... cargo build --workspace --examples --bins
    python3 benches/end_to_end.py --capfilt /tmp/capfilt-bench-bin/capfilt \
        --bin-dir /tmp/capfilt-bench-bin --model /tmp/blip-large-bench

The images are the web-sized variants that benches/prepare_stage.py writes (0.1 to 12
megapixels, JPEG, WebP and PNG), served from a loopback HTTP server. Two commands alternate
--repeat times with the same decoding settings and batch size:

  capfilt run      download, decode, preprocess, caption, write Parquet; the wall time of the
                   whole command, model loading included
  model stage      the `generate_tokens` example on the same images, preprocessed beforehand by
                   transformers' BlipImageProcessorPil, in batches of --batch-size; the time
                   of the generate calls alone

The ratio of images/s (capfilt run over model stage) shows how much of the preparation is
hidden behind the model: 1.0 means all of it.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benches"))

from machine import machine_info  # noqa: E402
from prepare_stage import make_images, start_server  # noqa: E402

SETTINGS = {
    "greedy": ["--decoding", "greedy", "--num-beams", "1", "--max-length", "20", "--min-length", "0", "--prompt", ""],
    "beam": ["--decoding", "beam", "--num-beams", "3", "--max-length", "20", "--min-length", "5", "--prompt", "a picture of "],
}


def log(message):
    print(message, file=sys.stderr, flush=True)


def preprocess(model_dir, paths):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from PIL import Image
    from transformers import BlipImageProcessorPil

    processor = BlipImageProcessorPil.from_pretrained(str(model_dir))
    rows = []
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("RGB")
            rows.append(processor(images=img, return_tensors="np")["pixel_values"][0].astype(np.float32))
    return np.stack(rows)


def run_capfilt(binary, url_list, out_dir, model_dir, case, batch_size):
    shutil.rmtree(out_dir, ignore_errors=True)
    command = [
        str(binary), "run", str(url_list), "--output", str(out_dir), "--model", str(model_dir),
        "--batch-size", str(batch_size), *SETTINGS[case],
        "--allow-private-networks", "--no-filter", "--overwrite",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start

    manifest = json.loads((out_dir / "_manifest.json").read_text())
    return {
        "seconds": seconds,
        "ok": manifest["counts"]["ok"],
        "run_seconds": manifest["seconds"],
        "model_seconds": manifest["model_seconds"],
        "model_batches": manifest["model_batches"],
    }


def run_model_stage(bin_dir, pixels_path, model_dir, case, batch_size):
    command = [
        str(Path(bin_dir) / "generate_tokens"), "--model", str(model_dir), "--pixels", str(pixels_path),
        *SETTINGS[case], "--mode", "batched", "--batch-size", str(batch_size),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return {"seconds": json.loads(out.stdout)["batched"]["seconds"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--capfilt", type=Path, required=True, help="the capfilt binary")
    ap.add_argument("--bin-dir", type=Path, required=True, help="folder with the generate_tokens example")
    ap.add_argument("--model", type=Path, default=Path("/tmp/blip-large-bench"))
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/capfilt-e2e-bench"))
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--case", choices=sorted(SETTINGS), default="greedy")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    files = make_images(args.workdir / "images")
    chosen = [files[i % len(files)] for i in range(args.images)]
    urls = [f"http://127.0.0.1:{args.port}/{f['file']}?row={i}" for i, f in enumerate(chosen)]
    url_list = args.workdir / "urls.txt"
    url_list.write_text("\n".join(urls) + "\n")
    megapixels = sum(f["width"] * f["height"] for f in chosen) / 1e6
    log(f"{len(urls)} images, {megapixels:.0f} megapixels")

    from safetensors.numpy import save_file

    pixels_path = args.workdir / "pixels.safetensors"
    save_file({"pixel_values": preprocess(args.model, [args.workdir / "images" / f["file"] for f in chosen])}, str(pixels_path))

    server, server_name = start_server(args.workdir / "images", args.port)
    log(f"serving from {server_name}")
    results = {"machine": machine_info(), "images": len(urls), "megapixels": megapixels, "case": args.case, "batch_size": args.batch_size}
    try:
        e2e, model = [], []
        for _ in range(args.repeat):
            model.append(run_model_stage(args.bin_dir, pixels_path, args.model, args.case, args.batch_size))
            log(f"model stage: {model[-1]}")
            e2e.append(run_capfilt(args.capfilt, url_list, args.workdir / "out", args.model, args.case, args.batch_size))
            log(f"capfilt run: {e2e[-1]}")
    finally:
        server.terminate()
        server.wait()

    for name, runs in (("capfilt_run", e2e), ("model_stage", model)):
        median = statistics.median(r["seconds"] for r in runs)
        results[name] = {"runs": runs, "median_seconds": median, "images_per_s": len(urls) / median}
    results["ratio"] = results["capfilt_run"]["images_per_s"] / results["model_stage"]["images_per_s"]
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
