//! Shard files read back with the tools downstream users load them with: pandas (through
//! pyarrow) and DuckDB. Both must see every row, the list columns as lists, and the same values
//! the Rust reader returns.
//!
//! Needs python3 with pandas, pyarrow and duckdb. Without them the test is skipped with a
//! message, unless `CAPFILT_REQUIRE_PYARROW=1` (set by CI), which makes their absence a failure.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Reads the folder `argv[1]` with pandas and DuckDB and prints what each reads as JSON. pandas
/// reads the whole folder, which works because pyarrow skips names starting with `_`, such as
/// `_manifest.json`.
const READER_SCRIPT: &str = r#"
import glob, json, sys
import duckdb, pandas as pd

folder = sys.argv[1]
files = sorted(glob.glob(folder + "/*.parquet"))
frame = pd.read_parquet(folder)
ok = frame[frame.status == "ok"]
failed = frame[frame.status != "ok"]

pattern = folder + "/*.parquet"
counts = duckdb.sql(
    f"select count(*), count(*) filter (where status = 'ok'), sum(len(captions)), "
    f"any_value(typeof(captions)), any_value(typeof(caption_itm)) from '{pattern}'"
).fetchall()[0]
captions = duckdb.sql(f"select unnest(captions) from '{pattern}' where status = 'ok'").fetchall()
model = duckdb.sql(
    f"select decode(value) from parquet_kv_metadata('{files[0]}') "
    f"where decode(key) = 'capfilt.captioner.model'"
).fetchall()

print(json.dumps({
    "pandas_rows": len(frame),
    "pandas_columns": list(frame.columns),
    "pandas_captions": {key: [str(c) for c in value] for key, value in zip(ok.key, ok.captions)},
    "pandas_itm_lengths": sorted(len(v) for v in ok.caption_itm),
    "pandas_failed_captions_null": bool(failed.captions.isna().all()),
    "duckdb_counts": [int(counts[0]), int(counts[1]), int(counts[2])],
    "duckdb_types": [counts[3], counts[4]],
    "duckdb_captions": sorted(row[0] for row in captions),
    "duckdb_model": [row[0] for row in model],
}))
"#;

/// Runs `READER_SCRIPT` on `dir`; `None` when a module is missing and CI did not require them.
fn read_with_python(dir: &Path) -> Option<serde_json::Value> {
    let required = std::env::var("CAPFILT_REQUIRE_PYARROW").is_ok_and(|v| v == "1");
    let output = match std::process::Command::new("python3")
        .arg("-c")
        .arg(READER_SCRIPT)
        .arg(dir)
        .output()
    {
        Ok(output) => output,
        Err(error) if !required => {
            eprintln!(
                "python3 is not available ({error}); skipping the pandas and DuckDB read-back"
            );
            return None;
        }
        Err(error) => panic!("python3 is required for the pandas and DuckDB read-back: {error}"),
    };

    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() && !required && stderr.contains("No module named") {
        eprintln!(
            "skipping the pandas and DuckDB read-back: {}",
            stderr.lines().last().unwrap_or_default()
        );
        return None;
    }
    assert!(
        output.status.success(),
        "pandas or DuckDB failed to read {}:\n{stderr}",
        dir.display()
    );
    Some(serde_json::from_slice(&output.stdout).unwrap())
}

fn photo_server() -> TestServer {
    let mut files = HashMap::new();
    for name in ["chelsea.png", "astronaut.jpg", "coffee.webp"] {
        files.insert(
            name.to_string(),
            std::fs::read(fixtures().join("photos").join(name)).unwrap(),
        );
    }
    image_server(files)
}

#[test]
fn pandas_and_duckdb_read_shards() {
    let server = photo_server();
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.jsonl");
    let entries = [
        (server.url("files/chelsea.png"), "a cat"),
        (server.url("files/astronaut.jpg"), "an astronaut"),
        (server.url("files/coffee.webp"), "a cup of coffee"),
        (server.url("missing"), "gone"),
        ("ftp://127.0.0.1/a.jpg".to_string(), "wrong scheme"),
    ];
    let text: String = entries
        .iter()
        .map(|(url, caption)| {
            format!(
                "{}\n",
                serde_json::json!({"url": url, "caption": caption, "license": "cc-by"})
            )
        })
        .collect();
    std::fs::write(&list, text).unwrap();
    let out = dir.path().join("out");
    let (model, filter) = (tiny_captioner(), fixtures().join("models/blip-tiny-itm"));

    // Shards of two rows, so the readers combine several files; the filter adds float and
    // boolean list columns.
    let args = [
        "run",
        list.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--config",
        "capfilt",
        "--model",
        model.to_str().unwrap(),
        "--filter-model",
        filter.to_str().unwrap(),
        "--num-captions",
        "2",
        "--shard-size",
        "2",
        "--keep-cols",
        "license",
        "--retries",
        "0",
        "--allow-private-networks",
    ];
    let output = run_capfilt(&args, &[], RUN_TIMEOUT);
    assert!(
        output.status.success(),
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let rows = read_shards(&out);
    assert_eq!(rows.len(), entries.len());
    let expected: HashMap<String, Vec<String>> = rows
        .iter()
        .filter(|r| r["status"].as_deref() == Some("ok"))
        .map(|r| {
            (
                r["key"].clone().unwrap(),
                r["captions"]
                    .as_deref()
                    .unwrap()
                    .split(" | ")
                    .map(String::from)
                    .collect(),
            )
        })
        .collect();
    assert_eq!(expected.len(), 3);
    let mut all_captions: Vec<String> = expected.values().flatten().cloned().collect();
    all_captions.sort();

    let Some(seen) = read_with_python(&out) else {
        return;
    };
    assert_eq!(seen["pandas_rows"], entries.len());
    for column in [
        "key",
        "url",
        "status",
        "captions",
        "caption_itm",
        "keep_captions",
        "license",
    ] {
        assert!(
            seen["pandas_columns"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == column),
            "pandas has no {column}: {seen}"
        );
    }
    let pandas_captions: HashMap<String, Vec<String>> =
        serde_json::from_value(seen["pandas_captions"].clone()).unwrap();
    assert_eq!(
        pandas_captions, expected,
        "pandas reads the same caption lists"
    );
    assert_eq!(seen["pandas_itm_lengths"], serde_json::json!([2, 2, 2]));
    assert_eq!(seen["pandas_failed_captions_null"], true);

    assert_eq!(
        seen["duckdb_counts"],
        serde_json::json!([5, 3, 6]),
        "rows, ok rows, captions"
    );
    assert_eq!(
        seen["duckdb_types"],
        serde_json::json!(["VARCHAR[]", "FLOAT[]"])
    );
    assert_eq!(seen["duckdb_captions"], serde_json::json!(all_captions));
    assert_eq!(
        seen["duckdb_model"],
        serde_json::json!([model.to_str().unwrap()]),
        "DuckDB reads the capfilt metadata"
    );
}
