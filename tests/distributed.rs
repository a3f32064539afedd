//! Distributed runs with real services on loopback: a `nats-server -js`, a moto S3 endpoint, a
//! loopback image server, and coordinator and worker processes of the capfilt binary. Each test
//! reads every output back and checks that every input row is present exactly once.
//!
//! The tests skip when `nats-server` (or `moto_server`) is not installed, unless
//! `CAPFILT_REQUIRE_SERVICES=1`, which CI sets.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(240);

fn services_required() -> bool {
    std::env::var("CAPFILT_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn installed(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            !services_required(),
            "{program} is required (CAPFILT_REQUIRE_SERVICES=1) but not installed"
        );
        eprintln!("{program} is not installed; skipping");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped, with its stderr in a file for failure messages.
struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(mut command: Command, log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        command.stdout(Stdio::null()).stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("failed to start {command:?}: {e}"));
        Process { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!(
                    "{} did not exit within {timeout:?}; log:\n{}",
                    self.log.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the process to exit and fails the test, with its log, unless it succeeded.
    fn expect_success(&mut self, timeout: Duration) {
        let status = self.wait(timeout);
        assert!(
            status.success(),
            "{} exited with {status}; log:\n{}",
            self.log.display(),
            self.log_text()
        );
    }

    fn wait_for_log(&self, text: &str, timeout: Duration) {
        wait_until(
            timeout,
            &format!("{text:?} in {}", self.log.display()),
            || self.log_text().contains(text),
        );
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A JetStream-enabled `nats-server` on a loopback port, with its store in a temporary folder
/// so it can be restarted with its streams intact.
struct NatsServer {
    port: u16,
    /// Extra server options, such as authentication.
    options: Vec<String>,
    store: tempfile::TempDir,
    process: Option<Process>,
}

impl NatsServer {
    fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    fn start_with(options: &[&str]) -> Option<Self> {
        if !installed("nats-server") {
            return None;
        }
        let mut server = NatsServer {
            port: free_port(),
            options: options.iter().map(|o| o.to_string()).collect(),
            store: tempfile::tempdir().unwrap(),
            process: None,
        };
        server.launch();
        Some(server)
    }

    fn launch(&mut self) {
        let mut command = Command::new("nats-server");
        command.args(&self.options);
        command
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path());
        let log = self.store.path().join(format!(
            "server-{}.log",
            Instant::now().elapsed().as_nanos()
        ));
        let process = Process::spawn(command, log);
        process.wait_for_log("Server is ready", Duration::from_secs(20));
        self.process = Some(process);
    }

    /// Kills the server (SIGKILL, no clean shutdown) and starts it again on the same port.
    fn restart(&mut self, down_for: Duration) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
        std::thread::sleep(down_for);
        self.launch();
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// Serves the same photograph at `/img/{anything}` after `delay`, counting requests per path.
struct SlowImages {
    server: TestServer,
    hits: Arc<Mutex<HashMap<String, u32>>>,
}

impl SlowImages {
    fn start(delay: Duration) -> Self {
        let photo = std::fs::read(fixtures().join("photos/astronaut.jpg")).unwrap();
        let hits: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
        let state = (Arc::new(photo), hits.clone(), delay);
        let router = Router::new()
            .route("/img/{name}", get(slow_image))
            .with_state(state);
        SlowImages {
            server: TestServer::start(router),
            hits,
        }
    }

    fn url(&self, name: &str) -> String {
        self.server.url(&format!("img/{name}"))
    }

    fn hits(&self) -> HashMap<String, u32> {
        self.hits.lock().unwrap().clone()
    }
}

type SlowState = (Arc<Vec<u8>>, Arc<Mutex<HashMap<String, u32>>>, Duration);

async fn slow_image(
    State((photo, hits, delay)): State<SlowState>,
    UrlPath(name): UrlPath<String>,
) -> impl IntoResponse {
    *hits.lock().unwrap().entry(name).or_default() += 1;
    tokio::time::sleep(delay).await;
    photo.as_ref().clone()
}

/// Writes a text list of `rows` distinct image URLs.
fn write_list(dir: &Path, images: &SlowImages, rows: usize) -> PathBuf {
    let list = dir.join("urls.txt");
    let text: String = (0..rows)
        .map(|i| format!("{}\n", images.url(&format!("{i}.jpg"))))
        .collect();
    std::fs::write(&list, text).unwrap();
    list
}

fn capfilt() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_capfilt"));
    command
        .env("RUST_LOG", "info")
        .env_remove("HF_ENDPOINT")
        .env_remove("CAPFILT_CONFIG");
    command
}

/// Queue settings short enough for tests: a job held by a killed worker returns in 3 s.
const QUEUE_ARGS: [&str; 4] = ["--ack-wait", "3s", "--max-deliver", "3"];

fn coordinator(
    nats: &NatsServer,
    list: &Path,
    output: &str,
    run_id: &str,
    shard_size: usize,
    log: PathBuf,
) -> Process {
    let model = tiny_captioner();
    let mut command = capfilt();
    command.arg("coordinator").arg(list).args([
        "--output",
        output,
        "--nats",
        &nats.url(),
        "--run-id",
        run_id,
    ]);
    command.args([
        "--model",
        model.to_str().unwrap(),
        "--decoding",
        "greedy",
        "--allow-private-networks",
    ]);
    command
        .args(["--shard-size", &shard_size.to_string()])
        .args(QUEUE_ARGS);
    Process::spawn(command, log)
}

fn worker(nats: &NatsServer, exit_when_idle: bool, log: PathBuf) -> Process {
    let mut command = capfilt();
    command
        .args([
            "worker",
            "--nats",
            &nats.url(),
            "--retry-delay",
            "200ms",
            "--shutdown-timeout",
            "5s",
        ])
        .args(QUEUE_ARGS);
    if exit_when_idle {
        command.arg("--exit-when-idle");
    }
    Process::spawn(command, log)
}

/// Checks that the shard files in `dir` hold each of the list's `rows` rows exactly once, all ok.
fn assert_rows_once(dir: &Path, list: &Path, rows: usize) {
    let tag = capfilt_coordinator::input_tag(&list.display().to_string());
    let read = read_shards(dir);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for row in &read {
        *seen.entry(row["key"].clone().unwrap()).or_default() += 1;
        assert_eq!(
            row["status"].as_deref(),
            Some("ok"),
            "row {:?} failed: {:?}",
            row["key"],
            row["error"]
        );
    }
    for i in 0..rows {
        assert_eq!(
            seen.get(&format!("{tag}:{i}")),
            Some(&1),
            "row {i} should appear exactly once"
        );
    }
    assert_eq!(read.len(), rows, "no extra rows");
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(dir.join("_manifest.json")).expect("_manifest.json is written"),
    )
    .unwrap()
}

fn parquet_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            .count()
    })
}

/// A NATS server, a slow image server and, in a temporary folder, a list of distinct image URLs
/// with an output folder beside it: what most tests here start from.
struct Scene {
    nats: NatsServer,
    images: SlowImages,
    dir: tempfile::TempDir,
    list: PathBuf,
    out: PathBuf,
}

impl Scene {
    /// Starts the servers and writes a list of `rows` URLs whose images take `delay` to serve.
    /// Returns `None` when nats-server is not installed (and not required).
    fn start(rows: usize, delay: Duration) -> Option<Self> {
        let nats = NatsServer::start()?;
        let images = SlowImages::start(delay);
        let dir = tempfile::tempdir().unwrap();
        let list = write_list(dir.path(), &images, rows);
        let out = dir.path().join("out");
        Some(Scene {
            nats,
            images,
            dir,
            list,
            out,
        })
    }
}

#[test]
fn two_workers_complete_run() {
    let Some(Scene {
        nats,
        images,
        dir,
        list,
        out,
    }) = Scene::start(22, Duration::from_millis(20))
    else {
        return;
    };

    let mut coordinator = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "complete",
        4,
        dir.path().join("coordinator.log"),
    );
    let mut first = worker(&nats, true, dir.path().join("worker-1.log"));
    let mut second = worker(&nats, true, dir.path().join("worker-2.log"));

    coordinator.expect_success(RUN_TIMEOUT);
    first.expect_success(Duration::from_secs(60));
    second.expect_success(Duration::from_secs(60));

    assert_rows_once(&out, &list, 22);
    let manifest = manifest(&out);
    assert_eq!(manifest["counts"]["rows"], 22);
    assert_eq!(manifest["counts"]["ok"], 22);
    assert_eq!(manifest["shards"].as_array().unwrap().len(), 6);
    assert!(manifest["failed_shards"].as_array().unwrap().is_empty());
    assert!(
        images.hits().values().all(|&n| n == 1),
        "every image is downloaded once: {:?}",
        images.hits()
    );
    if let Some((rows, _)) = pyarrow_read(&out) {
        assert_eq!(rows, 22);
    }
}

#[test]
fn killed_worker_shard_is_redelivered() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(12, Duration::from_millis(1500))
    else {
        return;
    };

    let mut coordinator = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "killed",
        4,
        dir.path().join("coordinator.log"),
    );
    let mut doomed = worker(&nats, false, dir.path().join("doomed.log"));
    doomed.wait_for_log("shard started", Duration::from_secs(60));
    doomed.kill();

    let mut survivor = worker(&nats, true, dir.path().join("survivor.log"));
    coordinator.expect_success(RUN_TIMEOUT);
    survivor.expect_success(Duration::from_secs(60));

    assert_rows_once(&out, &list, 12);
    let shards = manifest(&out)["shards"].as_array().unwrap().clone();
    assert!(
        shards.iter().any(|s| s["delivery"].as_i64().unwrap() >= 2),
        "the killed worker's shard is finished on a later delivery: {shards:?}"
    );
}

#[test]
fn terminated_worker_hands_shard_back() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(2, Duration::from_secs(8))
    else {
        return;
    };

    let mut coordinator = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "handback",
        2,
        dir.path().join("coordinator.log"),
    );
    let mut leaving = worker(&nats, false, dir.path().join("leaving.log"));
    leaving.wait_for_log("shard started", Duration::from_secs(60));
    let requested = Instant::now();
    leaving.terminate();
    let status = leaving.wait(Duration::from_secs(30));
    assert!(
        status.success(),
        "worker exits cleanly on SIGTERM:\n{}",
        leaving.log_text()
    );
    assert!(
        requested.elapsed() < Duration::from_secs(20),
        "worker exits within its shutdown deadline"
    );
    assert!(
        leaving.log_text().contains("handing the shard back"),
        "log:\n{}",
        leaving.log_text()
    );

    let mut next = worker(&nats, true, dir.path().join("next.log"));
    coordinator.expect_success(RUN_TIMEOUT);
    next.expect_success(Duration::from_secs(60));
    assert_rows_once(&out, &list, 2);
}

#[test]
fn run_survives_nats_restart() {
    let Some(Scene {
        mut nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(24, Duration::from_millis(300))
    else {
        return;
    };

    let mut coordinator = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "restart",
        3,
        dir.path().join("coordinator.log"),
    );
    let _first = worker(&nats, false, dir.path().join("worker-1.log"));
    let _second = worker(&nats, false, dir.path().join("worker-2.log"));
    wait_until(Duration::from_secs(120), "a first shard file", || {
        parquet_count(&out) >= 1
    });
    nats.restart(Duration::from_secs(1));

    coordinator.expect_success(RUN_TIMEOUT);
    assert_rows_once(&out, &list, 24);
}

#[test]
fn restarted_coordinator_resumes() {
    let Some(Scene {
        nats,
        images,
        dir,
        list,
        out,
    }) = Scene::start(20, Duration::from_millis(400))
    else {
        return;
    };

    let mut first = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "resume",
        4,
        dir.path().join("coordinator-1.log"),
    );
    let _worker = worker(&nats, false, dir.path().join("worker.log"));
    wait_until(Duration::from_secs(120), "two shard files", || {
        parquet_count(&out) >= 2
    });
    first.kill();

    let mut second = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "resume",
        4,
        dir.path().join("coordinator-2.log"),
    );
    second.expect_success(RUN_TIMEOUT);
    assert!(
        second.log_text().contains("resuming a run"),
        "log:\n{}",
        second.log_text()
    );

    assert_rows_once(&out, &list, 20);
    assert!(
        images.hits().values().all(|&n| n == 1),
        "no finished shard is redone: {:?}",
        images.hits()
    );
    assert_eq!(manifest(&out)["counts"]["rows"], 20);
}

#[test]
fn failing_shard_is_reported_without_blocking() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(12, Duration::from_millis(10))
    else {
        return;
    };

    // A folder where the second shard's file belongs makes every upload of that shard fail.
    let blocked = format!(
        "{}-00001",
        capfilt_coordinator::input_tag(&list.display().to_string())
    );
    std::fs::create_dir_all(out.join(format!("{blocked}.parquet")).join("occupied")).unwrap();

    let mut coordinator = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "failing",
        4,
        dir.path().join("coordinator.log"),
    );
    let mut worker = worker(&nats, true, dir.path().join("worker.log"));
    let status = coordinator.wait(RUN_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(2),
        "coordinator exits 2 when a shard failed:\n{}",
        coordinator.log_text()
    );
    assert!(
        coordinator
            .log_text()
            .contains(&format!("shard {blocked} failed")),
        "log:\n{}",
        coordinator.log_text()
    );
    worker.expect_success(Duration::from_secs(60));

    let failed = manifest(&out)["failed_shards"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], blocked.as_str());
    assert_eq!(
        failed[0]["deliveries"], 3,
        "the shard is tried max_deliver times"
    );
    assert_eq!(parquet_count(&out), 3, "the other shards are written");

    let status = capfilt()
        .args([
            "status",
            "--nats",
            &nats.url(),
            "--run-id",
            "failing",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["done"], 2);
    assert_eq!(status["failed"], 1);
    assert_eq!(status["failures"][0][0], blocked.as_str());
}

#[test]
fn status_rejects_unknown_run() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let output = capfilt()
        .args(["status", "--nats", &nats.url(), "--run-id", "never-started"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("never-started"), "{stderr}");
}

/// A moto S3 server on a loopback port.
struct S3Server {
    port: u16,
    _process: Process,
    _dir: tempfile::TempDir,
}

impl S3Server {
    fn start() -> Option<Self> {
        if !installed("moto_server") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut command = Command::new("moto_server");
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = Process::spawn(command, dir.path().join("moto.log"));
        wait_until(Duration::from_secs(30), "moto_server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(S3Server {
            port,
            _process: process,
            _dir: dir,
        })
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn client(&self) -> aws_sdk_s3::Client {
        let credentials = aws_sdk_s3::config::Credentials::new("test", "test", None, None, "test");
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version_latest()
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(credentials)
            .endpoint_url(self.endpoint())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    /// Environment for capfilt processes: static test credentials, this endpoint, path-style
    /// addressing, and no instance metadata lookups.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/nonexistent/aws-config".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/aws-credentials".into(),
            ),
            ("CAPFILT_S3_ENDPOINT", self.endpoint()),
            ("CAPFILT_S3_PATH_STYLE", "true".into()),
        ]
    }
}

#[test]
fn s3_inputs_images_and_outputs() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let Some(s3) = S3Server::start() else { return };
    let images = SlowImages::start(Duration::from_millis(10));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let client = s3.client();
    let photo = std::fs::read(fixtures().join("photos/chelsea.png")).unwrap();

    let list = format!(
        "url\tcaption\n{}\tweb one\n{}\tweb two\ns3://capfilt/images/cat.png\ta cat on s3\ns3://capfilt/images/missing.png\tgone\n",
        images.url("a.jpg"),
        images.url("b.jpg")
    );
    runtime.block_on(async {
        client
            .create_bucket()
            .bucket("capfilt")
            .send()
            .await
            .unwrap();
        for (key, body) in [
            ("lists/urls.tsv", list.into_bytes()),
            ("images/cat.png", photo),
        ] {
            client
                .put_object()
                .bucket("capfilt")
                .key(key)
                .body(body.into())
                .send()
                .await
                .unwrap();
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let model = tiny_captioner();
    let mut command = capfilt();
    command.args([
        "coordinator",
        "s3://capfilt/lists/urls.tsv",
        "--output",
        "s3://capfilt/runs/out",
        "--nats",
        &nats.url(),
    ]);
    command.args([
        "--run-id",
        "s3",
        "--model",
        model.to_str().unwrap(),
        "--decoding",
        "greedy",
        "--allow-private-networks",
    ]);
    command.args(QUEUE_ARGS);
    let mut worker_command = capfilt();
    worker_command
        .args(["worker", "--nats", &nats.url(), "--exit-when-idle"])
        .args(QUEUE_ARGS);
    for (key, value) in s3.env() {
        command.env(key, &value);
        worker_command.env(key, &value);
    }
    let mut coordinator = Process::spawn(command, dir.path().join("coordinator.log"));
    let mut worker = Process::spawn(worker_command, dir.path().join("worker.log"));
    coordinator.expect_success(RUN_TIMEOUT);
    worker.expect_success(Duration::from_secs(60));

    let local = dir.path().join("downloaded");
    std::fs::create_dir_all(&local).unwrap();
    let keys = runtime.block_on(async {
        let listed = client
            .list_objects_v2()
            .bucket("capfilt")
            .prefix("runs/out/")
            .send()
            .await
            .unwrap();
        let keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        for key in &keys {
            if key.ends_with(".parquet") || key.ends_with("_manifest.json") {
                let body = client
                    .get_object()
                    .bucket("capfilt")
                    .key(key)
                    .send()
                    .await
                    .unwrap()
                    .body
                    .collect()
                    .await
                    .unwrap();
                std::fs::write(
                    local.join(key.rsplit('/').next().unwrap()),
                    body.into_bytes(),
                )
                .unwrap();
            }
        }
        keys
    });
    assert!(
        keys.iter()
            .any(|k| k.starts_with("runs/out/_capfilt/runs/s3/rows/")),
        "shard rows are stored on S3: {keys:?}"
    );

    let rows = read_shards(&local);
    let by_caption: HashMap<String, HashMap<String, Option<String>>> = rows
        .into_iter()
        .map(|r| (r["caption"].clone().unwrap(), r))
        .collect();
    assert_eq!(by_caption.len(), 4);
    assert_eq!(by_caption["web one"]["status"].as_deref(), Some("ok"));
    assert_eq!(by_caption["a cat on s3"]["status"].as_deref(), Some("ok"));
    assert_eq!(
        by_caption["a cat on s3"]["image_format"].as_deref(),
        Some("png")
    );
    assert_eq!(by_caption["gone"]["status"].as_deref(), Some("http_error"));
    assert!(by_caption["gone"]["error"]
        .as_deref()
        .unwrap()
        .contains("no such object"));
    assert_eq!(manifest(&local)["counts"]["rows"], 4);
}

#[test]
fn coordinator_rejects_invalid_run_id() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/a.jpg\n").unwrap();
    let output = capfilt()
        .arg("coordinator")
        .arg(&list)
        .args([
            "--output",
            dir.path().join("out").to_str().unwrap(),
            "--nats",
            "nats://127.0.0.1:9",
            "--run-id",
            "../escape",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid run id"), "{stderr}");
}

/// Sends one HTTP GET over a plain TCP connection and returns the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};

    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Returns the value of the sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_served_by_worker_and_coordinator() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(8, Duration::from_millis(200))
    else {
        return;
    };
    let (worker_port, coordinator_port) = (free_port(), free_port());

    let mut command = capfilt();
    command.args([
        "worker",
        "--nats",
        &nats.url(),
        "--metrics-addr",
        &format!("127.0.0.1:{worker_port}"),
    ]);
    let worker = Process::spawn(command, dir.path().join("worker.log"));
    let model = tiny_captioner();
    let mut command = capfilt();
    command.arg("coordinator").arg(&list).args([
        "--output",
        out.to_str().unwrap(),
        "--nats",
        &nats.url(),
    ]);
    command.args([
        "--model",
        model.to_str().unwrap(),
        "--decoding",
        "greedy",
        "--allow-private-networks",
        "--shard-size",
        "2",
    ]);
    command.args(["--metrics-addr", &format!("127.0.0.1:{coordinator_port}")]);
    let mut coordinator = Process::spawn(command, dir.path().join("coordinator.log"));

    coordinator.wait_for_log("jobs published", Duration::from_secs(60));
    let text = http_get(coordinator_port, "/metrics");
    for series in [
        "capfilt_run_shards{state=\"queued\"}",
        "capfilt_queue_pending",
        "capfilt_queue_ack_pending",
    ] {
        assert!(
            sample(&text, series).is_some(),
            "coordinator exports {series}:\n{text}"
        );
    }
    coordinator.expect_success(RUN_TIMEOUT);

    // The worker counts a shard after acknowledging it, a moment after the coordinator reads its done state.
    let done = "capfilt_worker_shards_total{outcome=\"done\"}";
    wait_until(Duration::from_secs(10), "four shards counted", || {
        sample(&http_get(worker_port, "/metrics"), done) == Some(4.0)
    });
    let text = http_get(worker_port, "/metrics");
    assert_eq!(
        sample(&text, "capfilt_rows_total{status=\"ok\"}"),
        Some(8.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "capfilt_worker_shards_total{outcome=\"done\"}"),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "capfilt_downloads_total"),
        Some(8.0),
        "{text}"
    );
    assert!(
        sample(&text, "capfilt_download_bytes_total").unwrap() > 8.0 * 1000.0,
        "{text}"
    );
    assert!(
        sample(&text, "capfilt_batch_seconds_count").unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "capfilt_batch_size_sum"), Some(8.0), "{text}");
    assert_eq!(
        sample(&text, "capfilt_worker_shards_in_flight"),
        Some(0.0),
        "{text}"
    );
    drop(worker);
}

#[test]
fn token_auth_and_secret_kept_out_of_logs() {
    const TOKEN: &str = "tok-9f8e7d6c5b4a";
    let Some(nats) = NatsServer::start_with(&["--auth", TOKEN]) else {
        return;
    };
    let images = SlowImages::start(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path(), &images, 4);
    let out = dir.path().join("out");

    let model = tiny_captioner();
    let nats_url = nats.url();
    let without_token = [
        "coordinator",
        list.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--nats",
        &nats_url,
        "--model",
        model.to_str().unwrap(),
    ];
    let rejected = run_capfilt(&without_token, &[], Duration::from_secs(60));
    assert!(
        !rejected.status.success(),
        "a coordinator without the token is rejected"
    );
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("failed to connect to NATS"), "{stderr}");

    let mut command = capfilt();
    command.arg("coordinator").arg(&list).args([
        "--output",
        out.to_str().unwrap(),
        "--run-id",
        "token",
    ]);
    command.args([
        "--model",
        model.to_str().unwrap(),
        "--decoding",
        "greedy",
        "--allow-private-networks",
    ]);
    command
        .env("CAPFILT_NATS_URL", nats.url())
        .env("CAPFILT_NATS_TOKEN", TOKEN)
        .env("RUST_LOG", "debug");
    let mut coordinator = Process::spawn(command, dir.path().join("coordinator-token.log"));
    let mut command = capfilt();
    command
        .args(["worker", "--exit-when-idle", "--nats-token", TOKEN])
        .env("CAPFILT_NATS_URL", nats.url())
        .env("RUST_LOG", "debug");
    let mut worker = Process::spawn(command, dir.path().join("worker.log"));

    coordinator.expect_success(RUN_TIMEOUT);
    worker.expect_success(Duration::from_secs(60));
    assert_rows_once(&out, &list, 4);
    for log in [coordinator.log_text(), worker.log_text()] {
        assert!(!log.contains(TOKEN), "the token stays out of logs:\n{log}");
    }
    let manifest = std::fs::read_to_string(out.join("_manifest.json")).unwrap();
    assert!(!manifest.contains(TOKEN));

    let rejected = capfilt()
        .args([
            "status",
            "--nats",
            &nats.url(),
            "--run-id",
            "token",
            "--nats-token",
            "wrong-token",
        ])
        .output()
        .unwrap();
    assert!(!rejected.status.success(), "a wrong token is rejected");
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("failed to connect to NATS"), "{stderr}");
    assert!(!stderr.contains("wrong-token"), "{stderr}");
}

#[test]
fn user_password_auth() {
    let Some(nats) = NatsServer::start_with(&["--user", "capfilt", "--pass", "pw-5e4d3c2b"]) else {
        return;
    };
    let images = SlowImages::start(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path(), &images, 2);
    let out = dir.path().join("out");

    let model = tiny_captioner();
    let auth = ["--nats-user", "capfilt", "--nats-password", "pw-5e4d3c2b"];
    let mut command = capfilt();
    command.arg("coordinator").arg(&list).args([
        "--output",
        out.to_str().unwrap(),
        "--nats",
        &nats.url(),
        "--run-id",
        "userpass",
    ]);
    command
        .args([
            "--model",
            model.to_str().unwrap(),
            "--decoding",
            "greedy",
            "--allow-private-networks",
        ])
        .args(auth);
    let mut coordinator = Process::spawn(command, dir.path().join("coordinator.log"));
    let mut command = capfilt();
    command
        .args(["worker", "--exit-when-idle", "--nats", &nats.url()])
        .args(auth);
    let mut worker = Process::spawn(command, dir.path().join("worker.log"));

    coordinator.expect_success(RUN_TIMEOUT);
    worker.expect_success(Duration::from_secs(60));
    assert_rows_once(&out, &list, 2);
    assert!(!coordinator.log_text().contains("pw-5e4d3c2b"));
}

/// Runs a distributed run of `rows` rows with `extra` options on both processes and `env` set,
/// and checks it completes with every row once. Returns the coordinator's and worker's logs.
fn run_with_options(
    nats: &NatsServer,
    rows: usize,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (String, String) {
    let images = SlowImages::start(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path(), &images, rows);
    let out = dir.path().join("out");
    let model = tiny_captioner();

    let mut command = capfilt();
    command.arg("coordinator").arg(&list).args([
        "--output",
        out.to_str().unwrap(),
        "--nats",
        &nats.url(),
    ]);
    command
        .args([
            "--model",
            model.to_str().unwrap(),
            "--decoding",
            "greedy",
            "--allow-private-networks",
        ])
        .args(extra);
    command.envs(env.iter().copied());
    let mut coordinator = Process::spawn(command, dir.path().join("coordinator.log"));
    let mut command = capfilt();
    command
        .args(["worker", "--exit-when-idle", "--nats", &nats.url()])
        .args(extra)
        .envs(env.iter().copied());
    let mut worker = Process::spawn(command, dir.path().join("worker.log"));

    coordinator.expect_success(RUN_TIMEOUT);
    worker.expect_success(Duration::from_secs(60));
    assert_rows_once(&out, &list, rows);
    (coordinator.log_text(), worker.log_text())
}

#[test]
fn nkey_auth() {
    let pair = nkeys::KeyPair::new_user();
    let seed = pair.seed().unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("nkey.conf");
    std::fs::write(
        &config,
        format!(
            "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
            pair.public_key()
        ),
    )
    .unwrap();
    let Some(nats) = NatsServer::start_with(&["-c", config.to_str().unwrap()]) else {
        return;
    };

    let (coordinator_log, worker_log) = run_with_options(
        &nats,
        2,
        &[],
        &[("CAPFILT_NATS_NKEY", &seed), ("RUST_LOG", "debug")],
    );
    assert!(
        !coordinator_log.contains(&seed),
        "the seed stays out of logs"
    );
    assert!(!worker_log.contains(&seed), "the seed stays out of logs");
}

/// Writes a CA and a server certificate for 127.0.0.1 signed by it, with openssl.
fn write_test_certificates(dir: &Path) {
    let run = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=capfilt test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[test]
fn tls_with_private_ca() {
    if !installed("openssl") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    write_test_certificates(certs.path());
    let (cert, key, ca) = (
        certs.path().join("server.pem"),
        certs.path().join("server.key"),
        certs.path().join("ca.pem"),
    );
    let Some(nats) = NatsServer::start_with(&[
        "--tls",
        "--tlscert",
        cert.to_str().unwrap(),
        "--tlskey",
        key.to_str().unwrap(),
    ]) else {
        return;
    };

    let untrusted = run_capfilt(
        &[
            "status",
            "--nats",
            &nats.url(),
            "--run-id",
            "tls",
            "--nats-require-tls",
        ],
        &[],
        Duration::from_secs(60),
    );
    assert!(
        !untrusted.status.success(),
        "a server signed by an unknown CA is rejected"
    );
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("failed to connect to NATS"), "{stderr}");

    run_with_options(
        &nats,
        2,
        &["--nats-tls-ca", ca.to_str().unwrap(), "--nats-require-tls"],
        &[],
    );
}

#[test]
fn oversized_job_is_rejected() {
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("payload.conf");
    std::fs::write(&config, "max_payload: 4096\n").unwrap();
    let Some(nats) = NatsServer::start_with(&["-c", config.to_str().unwrap()]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/a.jpg\n").unwrap();

    // The job carries the configuration, so a 5000-byte user agent makes it too large.
    let user_agent = "a".repeat(5000);
    let model = tiny_captioner();
    let nats_url = nats.url();
    let out = dir.path().join("out");
    let args = [
        "coordinator",
        list.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--nats",
        &nats_url,
        "--model",
        model.to_str().unwrap(),
        "--user-agent",
        &user_agent,
    ];
    let output = run_capfilt(&args, &[], Duration::from_secs(60));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("over the server's max_payload of 4096 bytes"),
        "{stderr}"
    );
}

#[test]
fn worker_recreates_deleted_consumer() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(12, Duration::from_millis(300))
    else {
        return;
    };

    let mut coordinator = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "deleted",
        2,
        dir.path().join("coordinator.log"),
    );
    let mut worker = worker(&nats, true, dir.path().join("worker.log"));
    wait_until(Duration::from_secs(120), "a first shard file", || {
        parquet_count(&out) >= 1
    });

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .delete_consumer_from_stream("capfilt-workers", "CAPFILT_JOBS")
            .await
            .unwrap();
    });

    coordinator.expect_success(RUN_TIMEOUT);
    worker.expect_success(Duration::from_secs(60));
    assert_rows_once(&out, &list, 12);
}

#[test]
fn bad_model_fails_run_not_worker() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out: _,
    }) = Scene::start(2, Duration::from_millis(10))
    else {
        return;
    };
    let nats_url = nats.url();

    let mut command = capfilt();
    command
        .args(["worker", "--nats", &nats_url, "--retry-delay", "100ms"])
        .args(QUEUE_ARGS);
    let mut worker = Process::spawn(command, dir.path().join("worker.log"));

    let bad_out = dir.path().join("bad");
    let missing_model = dir.path().join("no-such-model");
    let mut command = capfilt();
    command.arg("coordinator").arg(&list).args([
        "--output",
        bad_out.to_str().unwrap(),
        "--nats",
        &nats_url,
        "--run-id",
        "bad",
    ]);
    command
        .args([
            "--model",
            missing_model.to_str().unwrap(),
            "--allow-private-networks",
        ])
        .args(QUEUE_ARGS);
    let mut bad = Process::spawn(command, dir.path().join("bad.log"));
    let status = bad.wait(RUN_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(2),
        "the run with a missing model fails:\n{}",
        bad.log_text()
    );
    assert!(
        bad.log_text().contains("failed to start the pipeline"),
        "{}",
        bad.log_text()
    );
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker is still running:\n{}",
        worker.log_text()
    );

    let good_out = dir.path().join("good");
    let mut good = coordinator(
        &nats,
        &list,
        good_out.to_str().unwrap(),
        "good",
        2,
        dir.path().join("good.log"),
    );
    good.expect_success(RUN_TIMEOUT);
    assert_rows_once(&good_out, &list, 2);
}

#[test]
fn reused_run_id_with_other_inputs_rejected() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(2, Duration::from_millis(10))
    else {
        return;
    };
    let mut first = coordinator(
        &nats,
        &list,
        out.to_str().unwrap(),
        "reused",
        2,
        dir.path().join("first.log"),
    );
    let mut worker = worker(&nats, true, dir.path().join("worker.log"));
    first.expect_success(RUN_TIMEOUT);
    worker.expect_success(Duration::from_secs(60));

    let other = dir.path().join("other");
    let mut second = coordinator(
        &nats,
        &list,
        other.to_str().unwrap(),
        "reused",
        2,
        dir.path().join("second.log"),
    );
    let status = second.wait(Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        second.log_text().contains("pick another --run-id"),
        "{}",
        second.log_text()
    );
}

#[test]
fn local_commands_reject_s3_paths() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("urls.txt");
    std::fs::write(&list, "http://127.0.0.1:9/a.jpg\n").unwrap();
    let cases: [&[&str]; 4] = [
        &[
            "run",
            list.to_str().unwrap(),
            "--output",
            "s3://bucket/labels",
        ],
        &["export", "s3://bucket/labels", "--output", "x.json"],
        &["report", "s3://bucket/labels"],
        &["inspect", "s3://bucket/labels/a.parquet"],
    ];
    for args in cases {
        let output = capfilt()
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("takes a local path"), "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join("s3:").exists(),
        "no folder named after the URL is created"
    );
}

#[test]
fn exhausted_job_without_coordinator_fails() {
    let Some(Scene {
        nats,
        images: _images,
        dir,
        list,
        out,
    }) = Scene::start(1, Duration::from_secs(30))
    else {
        return;
    };
    let nats_url = nats.url();
    let model = tiny_captioner();
    let coordinator_with = |log: &str| {
        let mut command = capfilt();
        command.arg("coordinator").arg(&list).args([
            "--output",
            out.to_str().unwrap(),
            "--nats",
            &nats_url,
            "--run-id",
            "stranded",
        ]);
        command.args([
            "--model",
            model.to_str().unwrap(),
            "--allow-private-networks",
            "--ack-wait",
            "2s",
            "--max-deliver",
            "1",
        ]);
        Process::spawn(command, dir.path().join(log))
    };

    // The first coordinator publishes and goes away; the only delivery then dies with its
    // worker, so the server's max-deliveries advisory reaches no coordinator.
    let mut first = coordinator_with("first.log");
    first.wait_for_log("jobs published", Duration::from_secs(60));
    first.kill();
    let mut command = capfilt();
    command.args([
        "worker",
        "--nats",
        &nats_url,
        "--ack-wait",
        "2s",
        "--max-deliver",
        "1",
    ]);
    let mut doomed = Process::spawn(command, dir.path().join("worker.log"));
    doomed.wait_for_log("shard started", Duration::from_secs(60));
    doomed.kill();
    std::thread::sleep(Duration::from_secs(4));

    let mut second = coordinator_with("second.log");
    let status = second.wait(Duration::from_secs(90));
    assert_eq!(
        status.code(),
        Some(2),
        "the stranded shard is reported failed:\n{}",
        second.log_text()
    );
    assert!(
        second.log_text().contains("deliveries ran out"),
        "{}",
        second.log_text()
    );
}
