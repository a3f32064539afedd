//! Helpers shared by the integration tests: loopback HTTP servers and the capfilt binary.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures")
}

pub fn tiny_captioner() -> PathBuf {
    fixtures().join("models/blip-tiny-captioning")
}

/// A loopback server running on its own runtime thread; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    pub fn start(router: Router) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                // No graceful shutdown: it would wait for stalled responses that never end.
                tokio::select! {
                    result = axum::serve(listener, router) => result.unwrap(),
                    _ = shutdown_rx => {}
                }
            });
            // Stalled responses would keep the runtime alive; drop it without waiting for them.
            runtime.shutdown_timeout(Duration::from_millis(100));
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("test server did not start");
        Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `files` by name under `/files/{name}`, plus the broken cases:
/// `/missing` (404), `/stall.jpg` (headers, then a body that never ends),
/// `/html.jpg` (an HTML page named as a JPEG).
pub fn image_server(files: HashMap<String, Vec<u8>>) -> TestServer {
    let router = Router::new()
        .route("/files/{name}", get(serve_file))
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .route("/stall.jpg", get(stalled_body))
        .route(
            "/html.jpg",
            get(|| async {
                (
                    [("content-type", "image/jpeg")],
                    "<!DOCTYPE html><html><body>Not found</body></html>",
                )
            }),
        )
        .with_state(std::sync::Arc::new(files));
    TestServer::start(router)
}

async fn serve_file(
    State(files): State<std::sync::Arc<HashMap<String, Vec<u8>>>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match files.get(&name) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stalled_body() -> Response {
    let stream = futures::stream::unfold(0u32, |n| async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok::<_, std::io::Error>(vec![0xffu8]), n + 1))
    });
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("image/jpeg"));
    (headers, Body::from_stream(stream)).into_response()
}

/// Mimics the Hugging Face hub's file routes for one repository folder:
/// `GET /{org}/{name}/resolve/{revision}/{file}` with `Range` support, `ETag` and
/// `X-Repo-Commit` headers, as hf-hub's client expects.
pub fn hub_server(repo_id: &str, folder: &Path, commit: &str) -> TestServer {
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            files.insert(
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            );
        }
    }
    let state = std::sync::Arc::new((repo_id.to_string(), commit.to_string(), files));
    let router = Router::new()
        .route(
            "/{org}/{name}/resolve/{revision}/{*file}",
            get(serve_hub_file),
        )
        .with_state(state);
    TestServer::start(router)
}

type HubState = std::sync::Arc<(String, String, HashMap<String, Vec<u8>>)>;

async fn serve_hub_file(
    State(state): State<HubState>,
    UrlPath((org, name, _revision, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let (repo_id, commit, files) = &*state;
    if &format!("{org}/{name}") != repo_id {
        return StatusCode::NOT_FOUND.into_response();
    }
    let Some(bytes) = files.get(&file) else {
        return (StatusCode::NOT_FOUND, [("x-error-code", "EntryNotFound")]).into_response();
    };

    let etag = format!("\"{:x}\"", bytes.len() as u64 * 2654435761 % 1_000_000_007);
    let total = bytes.len();
    let (start, end) = match headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_range)
    {
        Some((start, end)) => (start, end.min(total.saturating_sub(1))),
        None => {
            let response_headers = [("etag", etag), ("x-repo-commit", commit.clone())];
            return (response_headers, bytes.clone()).into_response();
        }
    };
    let body = bytes[start..=end].to_vec();
    let response_headers = [
        ("etag", etag),
        ("x-repo-commit", commit.clone()),
        ("content-range", format!("bytes {start}-{end}/{total}")),
    ];
    (StatusCode::PARTIAL_CONTENT, response_headers, body).into_response()
}

fn parse_range(value: &str) -> Option<(usize, usize)> {
    let range = value.strip_prefix("bytes=")?;
    let (start, end) = range.split_once('-')?;
    Some((start.parse().ok()?, end.parse().ok()?))
}

/// Runs the capfilt binary with `args` and extra environment, killing it after `timeout`.
pub fn run_capfilt(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_capfilt"));
    command
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("HF_ENDPOINT");
    for (key, value) in env {
        command.env(key, value);
    }
    command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("capfilt binary starts");

    let deadline = std::time::Instant::now() + timeout;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "capfilt did not finish within {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads every shard file in `dir` into rows of column name to optional string value
/// (lists are joined with " | ").
/// Returns the key-value metadata of the first Parquet file in `dir`.
pub fn file_metadata(dir: &Path) -> HashMap<String, String> {
    let path = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    use parquet::file::reader::FileReader;
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .unwrap()
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect()
}

pub fn read_shards(dir: &Path) -> Vec<HashMap<String, Option<String>>> {
    use arrow::array::{Array, ListArray};
    use arrow::util::display::array_value_to_string;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let mut rows = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    paths.sort();
    for path in paths {
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let schema = batch.schema();
            for i in 0..batch.num_rows() {
                let mut row = HashMap::new();
                for (field, column) in schema.fields().iter().zip(batch.columns()) {
                    let value = if column.is_null(i) {
                        None
                    } else if let Some(list) = column.as_any().downcast_ref::<ListArray>() {
                        let values = list.value(i);
                        let items: Vec<String> = (0..values.len())
                            .map(|j| array_value_to_string(&values, j).unwrap())
                            .collect();
                        Some(items.join(" | "))
                    } else {
                        Some(array_value_to_string(column, i).unwrap())
                    };
                    row.insert(field.name().clone(), value);
                }
                rows.push(row);
            }
        }
    }
    rows
}

/// Reads every shard in `dir` with pyarrow, as downstream users do, and returns the total row
/// count and the column names. `None` when pyarrow is not installed and
/// `CAPFILT_REQUIRE_PYARROW` is unset; CI sets it, so there the check always runs.
pub fn pyarrow_read(dir: &Path) -> Option<(usize, Vec<String>)> {
    let script = "import sys, glob, json, pyarrow.dataset as ds\n\
                  files = sorted(glob.glob(sys.argv[1] + '/*.parquet'))\n\
                  t = ds.dataset(files, format='parquet').to_table()\n\
                  print(json.dumps([t.num_rows, t.column_names]))";
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir)
        .output();
    let required = std::env::var("CAPFILT_REQUIRE_PYARROW").is_ok_and(|v| v == "1");
    match output {
        Ok(output) if output.status.success() => {
            let (rows, columns): (usize, Vec<String>) =
                serde_json::from_slice(&output.stdout).unwrap();
            Some((rows, columns))
        }
        Ok(output)
            if !required && String::from_utf8_lossy(&output.stderr).contains("No module named") =>
        {
            eprintln!("pyarrow is not installed; skipping the pyarrow read-back");
            None
        }
        Ok(output) => panic!(
            "pyarrow failed to read {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) if !required => {
            eprintln!("python3 is not available ({error}); skipping the pyarrow read-back");
            None
        }
        Err(error) => panic!("python3 is required for the pyarrow read-back: {error}"),
    }
}

/// Starts a server like `TestServer::start`, bound to `bind` (for example `127.0.0.2:0`, another
/// loopback address, or a fixed port), or returns `None` when that address cannot be bound.
pub fn start_server_at(bind: &str, router: Router) -> Option<TestServer> {
    let listener = std::net::TcpListener::bind(bind).ok()?;
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, shutdown_rx) = tokio::sync::oneshot::channel::<()>();

    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = shutdown_rx.await;
                })
                .await
                .unwrap();
        });
        // Stalled responses would keep the runtime alive; drop it without waiting for them.
        runtime.shutdown_timeout(Duration::from_millis(100));
    });
    Some(TestServer {
        addr,
        shutdown: Some(shutdown),
        thread: Some(thread),
    })
}
