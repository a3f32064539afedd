#!/usr/bin/env python3
"""Preparation-stage benchmark: capfilt's download + decode + resize against img2dataset.

    pip install img2dataset
    CARGO_TARGET_DIR=... cargo build --example prepare_urls
    python3 benches/prepare_stage.py --bin /tmp/capfilt-bench-bin/prepare_urls

The committed photos in tests/fixtures/photos are upscaled with Pillow to web-typical sizes
(0.1 to 12 megapixels), given a light film grain so that files have the entropy of real
photographs rather than of a smooth upscale, and written as JPEG (every size), WebP (up to
5 MP) and PNG (up to 2 MP). A loopback HTTP server on 127.0.0.1 serves them: nginx when it is
installed (`apt-get install nginx-light`), else python's http.server, which is slow enough to
bound both sides. Each file is listed --copies times under different query strings, so every row is a
separate download.

Both sides download every URL and bring the image to 384 pixels:

  capfilt      the `prepare_urls` example: capfilt's Fetcher and Preparer, as in `capfilt run`
               (decode, BLIP preprocessing: bicubic to 384x384 and normalised float CHW pixels),
               once decoding every image in full and once with --jpeg-dct-scaling
  img2dataset  image_size 384, resize_mode border (keeps the aspect ratio, pads to a square),
               re-encoded as JPEG into a files folder, as it always writes its output

Both get the same core count: capfilt's decode pool has --threads threads, img2dataset runs
--threads processes. The sides alternate --repeat times; images/s come from the median wall
time of each side's whole command, startup included. img2dataset's own shard timings are
reported as well, since its startup (Python imports, worker processes) is a fixed cost that
a longer list would hide.
"""

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benches"))

from machine import machine_info  # noqa: E402

PHOTOS = ["astronaut.jpg", "chelsea.png", "coffee.webp", "camera-small.png"]
MEGAPIXELS = [0.1, 0.3, 0.8, 2.0, 5.0, 12.0]
WEBP_MAX_MP = 5.0
PNG_MAX_MP = 2.0


def log(message):
    print(message, file=sys.stderr, flush=True)


def grain(img, seed):
    """Adds Gaussian grain (sigma 4 levels) so the upscaled photo compresses like a real one."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = np.asarray(img, dtype=np.int16)
    noisy = pixels + rng.normal(0, 4, pixels.shape).round().astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def make_images(folder):
    """Writes the image variants once and returns their file names with sizes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, name in enumerate(PHOTOS):
        with Image.open(REPO / "tests" / "fixtures" / "photos" / name) as src:
            src = src.convert("RGB")
            aspect = src.width / src.height
            for mp in MEGAPIXELS:
                files += write_variants(folder, Path(name).stem, src, aspect, mp, seed=index * 100 + int(mp * 10))
    return files


def write_variants(folder, stem, src, aspect, mp, seed):
    from PIL import Image

    height = round(math.sqrt(mp * 1e6 / aspect))
    width = round(height * aspect)
    formats = [("jpg", dict(quality=85))]
    if mp <= WEBP_MAX_MP:
        formats.append(("webp", dict(quality=80)))
    if mp <= PNG_MAX_MP:
        formats.append(("png", dict(compress_level=6)))

    written = []
    img = None
    for ext, options in formats:
        path = folder / f"{stem}-{mp:g}mp.{ext}"
        if not path.exists():
            if img is None:
                img = grain(src.resize((width, height), Image.Resampling.LANCZOS), seed)
            img.save(path, **options)
        written.append({"file": path.name, "width": width, "height": height, "bytes": path.stat().st_size})
    return written


NGINX_CONFIG = """
daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def start_server(folder, port):
    """Serves `folder` on 127.0.0.1:`port` and returns the process and the server's name.

    nginx serves when it is installed, because python's http.server spends about as much CPU per
    file as the clients being measured. Without nginx, http.server serves."""
    folder = Path(folder).resolve()
    if shutil.which("nginx"):
        work = folder.parent / "nginx"
        work.mkdir(exist_ok=True)
        config = work / "nginx.conf"
        config.write_text(NGINX_CONFIG.format(work=work, port=port, root=folder))
        command = ["nginx", "-c", str(config), "-p", str(work)]
        name = "nginx"
    else:
        command = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
        name = "python http.server"
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    return server, name


def write_url_list(path, files, port, copies):
    urls = [f"http://127.0.0.1:{port}/{f['file']}?copy={c}" for c in range(copies) for f in files]
    path.write_text("\n".join(urls) + "\n")
    return len(urls)


def run_capfilt(binary, url_list, threads, concurrency, extra=()):
    start = time.perf_counter()
    out = subprocess.run(
        [str(binary), str(url_list), "--threads", str(threads), "--concurrency", str(concurrency), *extra],
        check=True, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    report = json.loads(out.stdout)
    return {"seconds": seconds, "inner_seconds": report["seconds_per_run"][0], "ok": report["prepared"], "errors": report["errors"][:3]}


def offline_env():
    """img2dataset's imports would phone home: albumentations checks PyPI for a newer version
    at import time, and wandb may start a session. The benchmark sends nothing but loopback
    traffic, so both are switched off."""
    env = dict(os.environ)
    env.update(NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", WANDB_DISABLED="true", OTEL_SDK_DISABLED="true")
    return env


def run_img2dataset(url_list, out_dir, urls, threads, concurrency):
    shutil.rmtree(out_dir, ignore_errors=True)
    per_shard = math.ceil(urls / threads)
    command = [
        "img2dataset", "--url_list", str(url_list), "--input_format", "txt",
        "--output_folder", str(out_dir), "--output_format", "files",
        "--image_size", "384", "--resize_mode", "border",
        "--processes_count", str(threads), "--thread_count", str(max(1, concurrency // threads)),
        "--number_sample_per_shard", str(per_shard), "--retries", "0", "--timeout", "30",
        "--enable_wandb", "False",
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True, env=offline_env())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **shard_stats(out_dir)}


def shard_stats(out_dir):
    """Sums img2dataset's per-shard success counts and takes the span of its shard timings."""
    ok, starts, ends = 0, [], []
    for path in out_dir.glob("*_stats.json"):
        stats = json.loads(path.read_text())
        ok += stats.get("successes", 0)
        if "start_time" in stats and "end_time" in stats:
            starts.append(stats["start_time"])
            ends.append(stats["end_time"])
    span = (max(ends) - min(starts)) if starts else None
    return {"ok": ok, "inner_seconds": span}


def summarise(runs, urls, threads):
    median = statistics.median(r["seconds"] for r in runs)
    inner = [r["inner_seconds"] for r in runs if r.get("inner_seconds")]
    inner_median = statistics.median(inner) if inner else None
    return {
        "runs": runs,
        "median_seconds": median,
        "images_per_s": urls / median,
        "images_per_s_per_core": urls / median / threads,
        "inner_median_seconds": inner_median,
        "inner_images_per_s": urls / inner_median if inner_median else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, required=True, help="the built prepare_urls example")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/capfilt-prepare-bench"))
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="cores for each side (default: all CPUs)")
    ap.add_argument("--concurrency", type=int, default=32, help="downloads in flight on each side")
    ap.add_argument("--copies", type=int, default=4, help="times each file is listed")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the generated images")
    args = ap.parse_args()

    files = make_images(args.workdir / "images")
    url_list = args.workdir / "urls.txt"
    urls = write_url_list(url_list, files, args.port, args.copies)
    total_mp = sum(f["width"] * f["height"] for f in files) * args.copies / 1e6
    log(f"{len(files)} files, {urls} URLs, {total_mp:.0f} megapixels per pass")

    server, server_name = start_server(args.workdir / "images", args.port)
    log(f"serving from {server_name}")
    results = {"machine": machine_info(), "files": files, "urls": urls, "megapixels": total_mp, "threads": args.threads, "server": server_name}
    try:
        capfilt_runs, scaled_runs, img2dataset_runs = [], [], []
        for _ in range(args.repeat):
            capfilt_runs.append(run_capfilt(args.bin, url_list, args.threads, args.concurrency))
            log(f"capfilt: {capfilt_runs[-1]}")
            scaled_runs.append(run_capfilt(args.bin, url_list, args.threads, args.concurrency, ["--jpeg-dct-scaling"]))
            log(f"capfilt --jpeg-dct-scaling: {scaled_runs[-1]}")
            img2dataset_runs.append(run_img2dataset(url_list, args.workdir / "img2dataset-out", urls, args.threads, args.concurrency))
            log(f"img2dataset: {img2dataset_runs[-1]}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()

    sides = ("capfilt", "capfilt_dct_scaling", "img2dataset")
    results["capfilt"] = summarise(capfilt_runs, urls, args.threads)
    results["capfilt_dct_scaling"] = summarise(scaled_runs, urls, args.threads)
    results["img2dataset"] = summarise(img2dataset_runs, urls, args.threads)
    reference = results["img2dataset"]
    for side in sides[:2]:
        r = results[side]
        # Whole commands against each other, and capfilt's own pass time against img2dataset's
        # shard-timing span: both leave process start-up out.
        r["ratio"] = r["images_per_s"] / reference["images_per_s"]
        if reference["inner_images_per_s"]:
            r["ratio_inner"] = r["inner_images_per_s"] / reference["inner_images_per_s"]
    results["machine"]["loadavg_end"] = list(os.getloadavg())

    for side in sides:
        r = results[side]
        log(f"{side:12} median {r['median_seconds']:.2f} s  {r['images_per_s']:.1f} images/s  {r['images_per_s_per_core']:.1f} per core")
    print(json.dumps({k: v for k, v in results.items() if k != "files"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.keep:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
