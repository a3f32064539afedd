//! `capfilt report` on the output of a real CapFilt run with the tiny test models: the HTML's
//! figures, escaping of hostile captions, and the page as headless Chromium renders it. Gallery
//! images come from a loopback server, and the browser can load nothing from anywhere else.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(300);
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
const SCRIPT_CAPTION: &str = "<script>document.title='owned'</script>a cat";
const TABLE_CAPTION: &str = "</table></div><h1 id=\"injected\">big</h1>";
const WINDOW: (u32, u32) = (1280, 2400);

/// Serves the fixture photos under `/img/{name}` and records every path requested.
struct PhotoServer {
    server: TestServer,
    state: PhotoState,
}

type PhotoState = Arc<(Mutex<Vec<String>>, HashMap<String, Vec<u8>>)>;

impl PhotoServer {
    fn start() -> Self {
        let mut files = HashMap::new();
        for name in [
            "astronaut.jpg",
            "chelsea.png",
            "coffee.webp",
            "camera-small.png",
        ] {
            files.insert(
                name.to_string(),
                std::fs::read(fixtures().join("photos").join(name)).unwrap(),
            );
        }
        let state: PhotoState = Arc::new((Mutex::new(Vec::new()), files));
        let router = Router::new()
            .route("/img/{name}", get(serve_photo))
            .with_state(state.clone());
        Self {
            server: TestServer::start(router),
            state,
        }
    }

    fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    /// Returns the distinct paths requested since the last call, sorted.
    fn take_requests(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.state.0.lock().unwrap().drain(..).collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

async fn serve_photo(State(state): State<PhotoState>, UrlPath(name): UrlPath<String>) -> Response {
    state.0.lock().unwrap().push(format!("/img/{name}"));
    match state.1.get(&name) {
        Some(bytes) => bytes.clone().into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Runs the CapFilt preset on four photos (two with hostile web captions), one missing image
/// and one row without a URL, and returns the output folder.
fn capfilt_output(server: &PhotoServer, dir: &Path) -> PathBuf {
    let rows = [
        (server.url("img/astronaut.jpg"), Some(SCRIPT_CAPTION)),
        (server.url("img/chelsea.png"), Some(TABLE_CAPTION)),
        (server.url("img/coffee.webp"), Some("a cup of coffee")),
        (server.url("img/camera-small.png"), None),
        (server.url("img/missing.jpg"), Some("gone")),
        (String::new(), Some("no url")),
    ];
    let text: String = rows
        .iter()
        .map(|(url, caption)| {
            serde_json::json!({"url": url, "caption": caption}).to_string() + "\n"
        })
        .collect();
    let list = dir.join("list.jsonl");
    std::fs::write(&list, text).unwrap();

    let out = dir.join("out");
    let (model, filter) = (tiny_captioner(), fixtures().join("models/blip-tiny-itm"));
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
        "--allow-private-networks",
        "--retries",
        "0",
    ];
    let output = run_capfilt(&args, &[], RUN_TIMEOUT);
    assert!(
        output.status.success(),
        "capfilt run failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

fn write_report(out: &Path) -> (PathBuf, String) {
    let report = out.join("_report.html");
    let output = run_capfilt(
        &[
            "report",
            out.to_str().unwrap(),
            "-o",
            report.to_str().unwrap(),
        ],
        &[],
        RUN_TIMEOUT,
    );
    assert!(
        output.status.success(),
        "capfilt report failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let html = std::fs::read_to_string(&report).unwrap();
    (report, html)
}

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"]
        .iter()
        .find_map(|name| {
            Command::new("which")
                .arg(name)
                .output()
                .ok()
                .filter(|o| o.status.success())
        })
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    if found.is_none() && std::env::var("CAPFILT_REQUIRE_CHROMIUM").is_ok_and(|v| v == "1") {
        panic!("chromium is required (CAPFILT_REQUIRE_CHROMIUM=1) but not installed");
    }
    found
}

/// Runs headless Chromium on `page` with `mode` (`--dump-dom` or `--screenshot=...`). Host names
/// resolve nowhere, and every non-loopback request goes to a closed loopback proxy port, so the
/// browser cannot reach anything but this machine. Background services are off.
fn run_chromium(browser: &Path, profile: &Path, page: &Path, mode: &str) -> std::process::Output {
    let mut command = Command::new(browser);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args([
            "--disable-default-apps",
            "--disable-extensions",
            "--metrics-recording-only",
        ])
        .arg("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
        .arg("--proxy-server=http://127.0.0.1:9")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--window-size={},{}", WINDOW.0, WINDOW.1))
        .arg("--virtual-time-budget=10000")
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());

    let mut child = command.spawn().expect("chromium starts");
    let deadline = std::time::Instant::now() + CHROMIUM_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within {CHROMIUM_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Returns every value of `attribute="..."` in `html`.
fn attribute_values<'a>(html: &'a str, attribute: &str) -> Vec<&'a str> {
    let needle = format!(" {attribute}=\"");
    html.match_indices(&needle)
        .map(|(start, _)| {
            let value = &html[start + needle.len()..];
            &value[..value.find('"').unwrap()]
        })
        .collect()
}

fn element_count(html: &str, id: &str, attribute: &str) -> Option<u64> {
    let start = html.find(&format!("id=\"{id}\""))?;
    let tag_end = start + html[start..].find('>')?;
    let tag = &html[start..tag_end];
    attribute_values(&format!(" {tag}"), attribute)
        .first()?
        .parse()
        .ok()
}

fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    (width, height)
}

#[test]
fn report_html_counts_and_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let server = PhotoServer::start();
    let out = capfilt_output(&server, dir.path());

    let (_, html) = write_report(&out);

    assert!(!html.contains("<script"), "a script tag reached the page");
    assert!(html.contains("&lt;script&gt;document.title=&#39;owned&#39;&lt;/script&gt;a cat"));
    assert!(
        html.contains("&lt;/table&gt;&lt;/div&gt;&lt;h1 id=&quot;injected&quot;&gt;big&lt;/h1&gt;")
    );
    assert!(!html.contains("id=\"injected\""));
    assert!(
        html.contains("<tr data-status=\"ok\"><td>ok</td><td class=\"count\">4</td>"),
        "{html}"
    );
    assert!(html
        .contains("<tr data-status=\"http_error\"><td>http_error</td><td class=\"count\">1</td>"));
    assert!(html.contains(
        "<tr data-status=\"missing_url\"><td>missing_url</td><td class=\"count\">1</td>"
    ));
    assert!(html.contains("<span id=\"total-rows\">6</span>"));
    assert!(
        html.contains("HTTP 404"),
        "the 404 is listed among the failure reasons"
    );
    assert_eq!(
        element_count(&html, "web-itm", "data-total"),
        Some(3),
        "three ok rows have a web caption"
    );
    assert_eq!(
        element_count(&html, "caption-itm", "data-total"),
        Some(8),
        "two synthetic captions for each of four ok rows"
    );
    assert_eq!(element_count(&html, "caption-words", "data-total"), Some(8));
    assert_eq!(
        html.matches("class=\"marker\" data-value=\"0.5\"").count(),
        2,
        "threshold marked on both score charts"
    );
    assert!(
        html.contains("<table id=\"run\">"),
        "_manifest.json details are shown"
    );
}

#[test]
fn report_gallery_images_are_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let server = PhotoServer::start();
    let out = capfilt_output(&server, dir.path());

    let (_, html) = write_report(&out);

    let sources = attribute_values(&html, "src");
    assert_eq!(sources.len(), 4, "one image per ok row: {sources:?}");
    for source in &sources {
        assert!(
            source.starts_with(&format!("http://{}/img/", server.server.addr)),
            "{source}"
        );
    }
    assert!(
        attribute_values(&html, "href").is_empty(),
        "the page links nowhere"
    );
    assert!(
        html.contains("width=\"200\" height=\"200\""),
        "the square astronaut keeps its shape"
    );
}

#[test]
fn report_renders_in_chromium() {
    let Some(browser) = chromium() else {
        eprintln!("chromium is not installed; skipping the headless browser check (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = PhotoServer::start();
    let out = capfilt_output(&server, dir.path());
    let (report, _) = write_report(&out);
    server.take_requests();

    let dom = run_chromium(
        &browser,
        &dir.path().join("profile-dom"),
        &report,
        "--dump-dom",
    );
    let dom_text = String::from_utf8_lossy(&dom.stdout).into_owned();
    assert!(
        dom.status.success(),
        "chromium --dump-dom failed: {}",
        String::from_utf8_lossy(&dom.stderr)
    );

    assert!(dom_text.contains("<h1>capfilt report</h1>"), "{dom_text}");
    assert!(
        !dom_text.contains("<script"),
        "the hostile caption became a script element"
    );
    assert!(
        !dom_text.contains("<h1 id=\"injected\""),
        "the hostile caption became markup"
    );
    assert!(
        dom_text.contains("&lt;/table&gt;&lt;/div&gt;&lt;h1 id=\"injected\"&gt;big&lt;/h1&gt;"),
        "the caption is shown as text"
    );
    assert!(
        dom_text.contains("&lt;script&gt;document.title='owned'&lt;/script&gt;a cat"),
        "the caption is shown as text"
    );
    assert!(
        dom_text.contains("<title>capfilt report:"),
        "the title was not rewritten by a script"
    );
    assert_eq!(
        dom_text.matches("class=\"card\"").count(),
        4,
        "the gallery holds every ok row"
    );
    assert_eq!(
        dom_text.matches("<svg id=").count(),
        4,
        "two score and two length charts"
    );
    assert!(
        dom_text.contains("id=\"gallery\""),
        "the closing tags in a caption did not end the page early"
    );

    for source in attribute_values(&dom_text, "src") {
        assert!(
            source.starts_with(&format!("http://{}/", server.server.addr)),
            "the page loads {source}"
        );
    }
    let requested = server.take_requests();
    assert_eq!(
        requested,
        [
            "/img/astronaut.jpg",
            "/img/camera-small.png",
            "/img/chelsea.png",
            "/img/coffee.webp"
        ],
        "the browser loaded each gallery image from the loopback server"
    );

    let screenshot = dir.path().join("report.png");
    let shot = run_chromium(
        &browser,
        &dir.path().join("profile-shot"),
        &report,
        &format!("--screenshot={}", screenshot.display()),
    );
    assert!(
        shot.status.success(),
        "chromium --screenshot failed: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let png = std::fs::read(&screenshot).expect("chromium wrote the screenshot");
    assert_eq!(png_size(&png), WINDOW);
    // A blank page of this size compresses to a few KiB; charts, text and four photos do not.
    assert!(
        png.len() > 100 * 1024,
        "the screenshot looks blank: {} bytes",
        png.len()
    );
    if let Ok(keep) = std::env::var("CAPFILT_KEEP_SCREENSHOT") {
        std::fs::copy(&screenshot, keep).unwrap();
    }
}

#[test]
fn report_empty_folder_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();

    let output = run_capfilt(&["report", dir.path().to_str().unwrap()], &[], RUN_TIMEOUT);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no shard files (*.parquet) in"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn report_bad_shard_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("abc-00000.parquet");
    std::fs::write(&bad, "not parquet").unwrap();

    let output = run_capfilt(&["report", dir.path().to_str().unwrap()], &[], RUN_TIMEOUT);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("failed to read shard file {}", bad.display())),
        "{stderr}"
    );
    assert!(stderr.contains("not a valid Parquet file"), "{stderr}");
    assert!(
        !dir.path().join("_report.html").exists(),
        "no report from a broken folder"
    );
}

#[test]
fn report_foreign_parquet_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("x", arrow::datatypes::DataType::Int32, false),
    ]));
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(arrow::array::Int32Array::from(vec![1]))],
    )
    .unwrap();
    let file = std::fs::File::create(dir.path().join("other.parquet")).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let output = run_capfilt(&["report", dir.path().to_str().unwrap()], &[], RUN_TIMEOUT);

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no column key; is this a shard file written by capfilt?"),
        "{stderr}"
    );
}
