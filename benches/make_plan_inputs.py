#!/usr/bin/env python3
"""Writes a URL list of --rows rows as Parquet (LAION's URL/TEXT columns) or as JSONL
(url/caption), for benches/plan.sh.

    python3 benches/make_plan_inputs.py --rows 10000000 --format jsonl --out /tmp/capfilt-plan-bench/10m.jsonl

Rows look like web crawl rows: URLs of about 90 characters on a few hundred hosts and captions
of 3 to 16 words, about 60 characters. The content is deterministic, so every run reads the
same bytes. Rows are written in chunks, so memory stays flat at any row count.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

WORDS = (
    "a the of on in with and dog cat man woman child street city beach mountain river car bus "
    "train house room table chair window tree flower sky cloud sunset night red blue green white "
    "black small large old new wooden stone glass photo view close up standing sitting walking"
).split()
CHUNK = 500_000


def chunk_columns(start, count, rng):
    """Returns the URL and caption strings of rows start .. start + count."""
    ids = np.arange(start, start + count)
    hosts = rng.integers(0, 300, count)
    digests = rng.integers(0, 2**62, count)
    urls = [f"https://cdn{h}.images-example.com/photos/2024/{i % 997:03d}/{i:010d}-{d:016x}-large.jpg" for i, h, d in zip(ids.tolist(), hosts.tolist(), digests.tolist())]

    lengths = rng.integers(3, 17, count)
    picks = rng.integers(0, len(WORDS), int(lengths.sum()))
    captions, at = [], 0
    for n in lengths.tolist():
        captions.append(" ".join(WORDS[w] for w in picks[at : at + n].tolist()))
        at += n
    return urls, captions


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, required=True)
    ap.add_argument("--format", choices=["parquet", "jsonl"], required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    chunks = (chunk_columns(start, min(CHUNK, args.rows - start), rng) for start in range(0, args.rows, CHUNK))
    if args.format == "parquet":
        write_parquet(args.out, chunks)
    else:
        write_jsonl(args.out, chunks)


def write_parquet(path, chunks):
    schema = pa.schema([("URL", pa.string()), ("TEXT", pa.string())])
    with pq.ParquetWriter(str(path), schema, compression="snappy") as parquet:
        for urls, captions in chunks:
            parquet.write_table(pa.table({"URL": urls, "TEXT": captions}, schema=schema), row_group_size=100_000)


def write_jsonl(path, chunks):
    with open(path, "w") as jsonl:
        for urls, captions in chunks:
            jsonl.write("".join(json.dumps({"url": u, "caption": c}) + "\n" for u, c in zip(urls, captions)))


if __name__ == "__main__":
    main()
