//! Peak memory of `capfilt run` over a hostile list of 1000 and of 10000 rows, served from
//! loopback: working images, the same image on many rows, 404s, refused connections, servers
//! that stall past a short deadline, awkward and broken images, and rows without a usable URL.
//!
//! It takes minutes, so it is ignored by default:
//!
//! ```sh
//! cargo test --test memory_run -- --ignored --nocapture
//! ```
//!
//! Set `CAPFILT_BIN` to measure another build of the binary (for example the release one).
//! Needs GNU time at `/usr/bin/time` (Debian package `time`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::*;

/// Bodies served by name: the photos, the awkward images, and broken variants.
fn images() -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for folder in ["photos", "awkward"] {
        for entry in std::fs::read_dir(fixtures().join(folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if ["jpg", "png", "webp", "avif"]
                .iter()
                .any(|e| name.ends_with(e))
                && !name.contains(".pil.")
            {
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    let jpeg = files["astronaut.jpg"].clone();
    files.insert("truncated.jpg".into(), jpeg[..jpeg.len() / 2].to_vec());
    files.insert(
        "page.jpg".into(),
        b"<!DOCTYPE html><html><body>soft 404</body></html>".to_vec(),
    );
    files
}

fn server() -> (TestServer, Vec<String>) {
    let files = Arc::new(images());
    let mut names: Vec<String> = files.keys().cloned().collect();
    names.sort();
    let router = Router::new()
        .route("/img/{name}/{n}", get(serve))
        .route("/missing/{n}", get(|| async { StatusCode::NOT_FOUND }))
        .route("/stall/{n}", get(stall))
        .with_state(files);
    (TestServer::start(router), names)
}

async fn serve(
    State(files): State<Arc<HashMap<String, Vec<u8>>>>,
    UrlPath((name, _)): UrlPath<(String, u64)>,
) -> Response {
    match files.get(&name) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Headers at once, then a byte a second for 30 s: the run's 1 s deadline ends it first.
async fn stall() -> Response {
    let stream = futures::stream::unfold(0u32, |sent| async move {
        if sent == 30 {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok::<_, std::io::Error>(vec![0xffu8]), sent + 1))
    });
    ([("content-type", "image/jpeg")], Body::from_stream(stream)).into_response()
}

/// Writes the row for `i`, cycling through the hostile cases ten rows at a time.
fn list_line(server: &TestServer, names: &[String], i: usize) -> String {
    let name = &names[i % names.len()];
    let url = match i % 10 {
        0 | 1 => server.url(&format!("img/{name}/{i}")),
        2 | 3 => server.url(&format!("img/chelsea.png/{}", i % 7)),
        4 => server.url(&format!("missing/{i}")),
        5 => format!("http://127.0.0.1:1/refused/{i}.jpg"),
        6 => server.url(&format!("stall/{i}")),
        7 => server.url(&format!("img/truncated.jpg/{i}")),
        8 => server.url(&format!("img/page.jpg/{i}")),
        _ => {
            return serde_json::json!({"url": null, "caption": format!("row {i} has no URL")})
                .to_string()
        }
    };
    serde_json::json!({"url": url, "caption": format!("web caption of row {i}")}).to_string()
}

struct Measured {
    rows: usize,
    peak_kib: u64,
    seconds: f64,
    manifest: serde_json::Value,
}

fn measure(server: &TestServer, names: &[String], rows: usize, dir: &Path) -> Measured {
    let text: String = (0..rows)
        .map(|i| list_line(server, names, i) + "\n")
        .collect();
    let list = dir.join(format!("hostile-{rows}.jsonl"));
    std::fs::write(&list, text).unwrap();
    let out = dir.join(format!("out-{rows}"));
    let binary = std::env::var("CAPFILT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_capfilt")));
    let model = tiny_captioner();

    let started = Instant::now();
    let output = std::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(&binary)
        .args([
            "run",
            list.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ])
        .args([
            "--decoding",
            "greedy",
            "--shard-size",
            "1000",
            "--timeout",
            "1",
            "--connect-timeout",
            "1",
            "--retries",
            "0",
        ])
        .args(["--per-host-concurrency", "0", "--allow-private-networks"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("/usr/bin/time runs (apt-get install time)");
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{rows} rows: stderr:\n{stderr}");

    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["counts"]["rows"], rows, "every row answered");
    Measured {
        rows,
        peak_kib: peak_rss_kib(&stderr),
        seconds,
        manifest,
    }
}

fn peak_rss_kib(time_report: &str) -> u64 {
    time_report
        .lines()
        .find_map(|line| {
            line.trim()
                .strip_prefix("Maximum resident set size (kbytes):")
        })
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in the time report:\n{time_report}"))
}

#[test]
#[ignore = "takes minutes; run with --ignored to measure peak memory"]
fn peak_memory_does_not_grow_with_rows() {
    let (server, names) = server();
    let dir = tempfile::tempdir().unwrap();

    let small = measure(&server, &names, 1_000, dir.path());
    let large = measure(&server, &names, 10_000, dir.path());

    for run in [&small, &large] {
        println!(
            "{} rows: peak RSS {:.1} MiB, {:.1} s, {} downloads, {} deduplicated rows, by status {}",
            run.rows,
            run.peak_kib as f64 / 1024.0,
            run.seconds,
            run.manifest["downloads"],
            run.manifest["deduplicated_rows"],
            run.manifest["counts"]["by_status"]
        );
    }
    // Ten times the rows may cost a little more (longer-lived allocator arenas, the manifest's
    // shard list), but not ten times the memory.
    let growth = large.peak_kib as f64 / small.peak_kib as f64;
    assert!(
        growth < 1.5,
        "peak RSS grew {growth:.2}x from 1000 to 10000 rows"
    );
}
