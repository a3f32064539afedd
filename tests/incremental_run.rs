//! Incremental runs: `--skip-labelled` makes a run skip rows that an earlier run with the same
//! models and settings labelled `ok`, matched by URL (no download) or by image bytes (no model).
//! A loopback server records every request, so the tests see which images were fetched again.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

type Row = HashMap<String, Option<String>>;

/// Serves the fixture photos under `/files/{name}` (plus `chelsea-copy.png`, the same bytes as
/// `chelsea.png`) and `/missing` (404), recording the path and query of every request.
struct RecordingServer {
    server: TestServer,
    requests: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
struct Served {
    files: Arc<HashMap<String, Vec<u8>>>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl RecordingServer {
    fn start() -> Self {
        let mut files = HashMap::new();
        for name in ["chelsea.png", "astronaut.jpg", "coffee.webp"] {
            files.insert(
                name.to_string(),
                std::fs::read(fixtures().join("photos").join(name)).unwrap(),
            );
        }
        files.insert("chelsea-copy.png".into(), files["chelsea.png"].clone());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = Served {
            files: Arc::new(files),
            requests: requests.clone(),
        };

        let router = Router::new()
            .route("/files/{name}", get(serve_file))
            .route("/missing", get(serve_missing))
            .with_state(state);
        Self {
            server: TestServer::start(router),
            requests,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Returns the requests seen since the last call, sorted.
    fn take_requests(&self) -> Vec<String> {
        let mut requests = std::mem::take(&mut *self.requests.lock().unwrap());
        requests.sort();
        requests
    }
}

async fn serve_file(
    State(state): State<Served>,
    UrlPath(name): UrlPath<String>,
    uri: Uri,
) -> Response {
    state.requests.lock().unwrap().push(uri.to_string());
    match state.files.get(&name) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn serve_missing(State(state): State<Served>, uri: Uri) -> Response {
    state.requests.lock().unwrap().push(uri.to_string());
    StatusCode::NOT_FOUND.into_response()
}

fn write_list(path: &Path, urls: &[String]) {
    let text: String = urls.iter().map(|u| format!("{u}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn run(list: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let model = tiny_captioner();
    let mut args = vec![
        "run",
        list.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--decoding",
        "greedy",
        "--batch-size",
        "4",
        "--retries",
        "0",
        "--timeout",
        "10",
        "--allow-private-networks",
    ];
    args.extend_from_slice(extra);
    let output = run_capfilt(&args, env, RUN_TIMEOUT);
    assert!(
        output.status.success(),
        "capfilt run failed; stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap()).unwrap()
}

fn row<'a>(rows: &'a [Row], url: &str) -> &'a Row {
    rows.iter()
        .find(|r| r["url"].as_deref() == Some(url))
        .unwrap_or_else(|| panic!("no row for {url}: {rows:?}"))
}

fn status(rows: &[Row], url: &str) -> String {
    row(rows, url)["status"].clone().unwrap_or_default()
}

/// Returns the id of the only shard file in `out`.
fn only_shard_id(out: &Path) -> String {
    let ids: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

fn json_log_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[test]
fn url_mode_fetches_only_new_urls() {
    let server = RecordingServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (list, run1, run2) = (
        dir.path().join("urls.txt"),
        dir.path().join("run1"),
        dir.path().join("run2"),
    );
    let old = [
        server.url("files/chelsea.png?n=0"),
        server.url("files/chelsea.png?n=1"),
        server.url("files/astronaut.jpg?n=2"),
        server.url("missing?n=3"),
    ];
    let new = [
        server.url("files/coffee.webp?n=4"),
        server.url("files/chelsea.png?n=5"),
    ];
    write_list(&list, &old);
    run(&list, &run1, &[], &[]);
    let first_shard = only_shard_id(&run1);
    assert_eq!(server.take_requests().len(), 4);

    // The list grows in place, as a nightly job's list does.
    write_list(&list, &[old.to_vec(), new.to_vec()].concat());
    let env = [("RUST_LOG", "info,capfilt=debug")];
    let output = run(
        &list,
        &run2,
        &[
            "--skip-labelled",
            run1.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        &env,
    );

    let mut expected = vec![
        "/files/chelsea.png?n=5",
        "/files/coffee.webp?n=4",
        "/missing?n=3",
    ];
    expected.sort();
    assert_eq!(
        server.take_requests(),
        expected,
        "only new URLs and the earlier failure are fetched"
    );

    let rows = read_shards(&run2);
    assert_eq!(rows.len(), 6, "every input row has an output row");
    for url in &old[..3] {
        assert_eq!(status(&rows, url), "already_labelled");
        let error = row(&rows, url)["error"].clone().unwrap_or_default();
        assert!(
            error.contains(&first_shard),
            "{url}: the error names the earlier shard: {error}"
        );
        assert!(row(&rows, url)["captions"].is_none());
    }
    assert_eq!(
        status(&rows, &old[3]),
        "http_error",
        "a row that failed before is tried again"
    );
    for url in &new {
        assert_eq!(status(&rows, url), "ok");
    }

    let manifest = manifest(&run2);
    assert_eq!(manifest["counts"]["rows"], 6);
    assert_eq!(manifest["counts"]["ok"], 2);
    assert_eq!(manifest["counts"]["failed"], 1);
    assert_eq!(manifest["counts"]["already_labelled"], 3);
    assert_eq!(manifest["counts"]["by_status"]["already_labelled"], 3);
    assert_eq!(manifest["downloads"], 3);

    let lines = json_log_lines(&output.stderr);
    let download_failure = lines
        .iter()
        .find(|l| l["fields"]["message"] == "download failed")
        .unwrap_or_else(|| {
            panic!(
                "no download failure logged:\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    assert_eq!(
        download_failure["span"]["name"], "shard",
        "{download_failure}"
    );
    assert_eq!(
        download_failure["span"]["id"],
        first_shard.as_str(),
        "the shard id of run 2 equals run 1's: {download_failure}"
    );
    let batches: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "batch captioned")
        .collect();
    assert!(
        !batches.is_empty(),
        "no batch logged:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        batches.iter().all(|b| b["span"]["name"] == "batch"),
        "{batches:?}"
    );
    let total = |field: &str| {
        batches
            .iter()
            .map(|b| b["span"][field].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        total("size"),
        2,
        "only the two new images reach the model: {batches:?}"
    );
    assert_eq!(total("rows"), 2, "{batches:?}");
}

#[test]
fn other_settings_do_not_skip() {
    let server = RecordingServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (list, run1, run2) = (
        dir.path().join("urls.txt"),
        dir.path().join("run1"),
        dir.path().join("run2"),
    );
    let urls = [
        server.url("files/chelsea.png"),
        server.url("files/astronaut.jpg"),
    ];
    write_list(&list, &urls);
    run(&list, &run1, &[], &[]);
    server.take_requests();

    let output = run(
        &list,
        &run2,
        &[
            "--skip-labelled",
            run1.to_str().unwrap(),
            "--max-length",
            "12",
        ],
        &[],
    );

    assert_eq!(
        server.take_requests(),
        ["/files/astronaut.jpg", "/files/chelsea.png"]
    );
    let rows = read_shards(&run2);
    assert!(
        rows.iter().all(|r| r["status"].as_deref() == Some("ok")),
        "{rows:?}"
    );
    assert_eq!(manifest(&run2)["counts"]["already_labelled"], 0);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ignoring 1 earlier shard file(s) written with other models or settings"),
        "{stderr}"
    );
}

#[test]
fn content_mode_skips_renamed_copy() {
    let server = RecordingServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (run1, run2) = (dir.path().join("run1"), dir.path().join("run2"));
    let (first_list, second_list) = (dir.path().join("first.txt"), dir.path().join("second.txt"));
    write_list(&first_list, &[server.url("files/chelsea.png")]);
    run(&first_list, &run1, &[], &[]);
    let first_rows = read_shards(&run1);
    server.take_requests();

    let copy = server.url("files/chelsea-copy.png");
    write_list(&second_list, &[copy.clone(), server.url("missing")]);
    let args = [
        "--skip-labelled",
        run1.to_str().unwrap(),
        "--skip-by",
        "content",
    ];
    run(&second_list, &run2, &args, &[]);

    assert_eq!(
        server.take_requests(),
        ["/files/chelsea-copy.png", "/missing"],
        "content mode still downloads"
    );
    let rows = read_shards(&run2);
    let copied = row(&rows, &copy);
    assert_eq!(
        copied["status"].as_deref(),
        Some("already_labelled"),
        "{copied:?}"
    );
    assert_eq!(
        copied["sha256"], first_rows[0]["sha256"],
        "the copy has the same bytes"
    );
    assert!(
        copied["width"].is_some() && copied["captions"].is_none(),
        "{copied:?}"
    );
    assert_eq!(status(&rows, &server.url("missing")), "http_error");
    let manifest = manifest(&run2);
    assert_eq!(manifest["model_batches"], 0, "no image reached the model");
    assert_eq!(manifest["counts"]["already_labelled"], 1);
}

#[test]
fn skip_options_from_environment() {
    let env = [
        ("CAPFILT_SKIP_LABELLED", "/data/night1,/data/night2"),
        ("CAPFILT_SKIP_BY", "content"),
    ];
    let output = run_capfilt(&["config", "show"], &env, Duration::from_secs(60));

    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let config: toml::Value = toml::from_str(&String::from_utf8_lossy(&output.stdout)).unwrap();
    assert_eq!(
        config["run"]["skip_labelled"].as_array().unwrap().len(),
        2,
        "{config}"
    );
    assert_eq!(config["run"]["skip_by"].as_str(), Some("content"));
}
