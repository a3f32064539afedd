//! End-to-end runs of `capfilt run` on URL lists in every supported format, served by a
//! loopback HTTP server with real photographs and broken cases, reading every shard back.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn photo_bytes() -> HashMap<String, Vec<u8>> {
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(fixtures().join("photos")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e != "md") {
            files.insert(path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap());
        }
    }
    let jpeg = files["astronaut.jpg"].clone();
    files.insert("truncated.jpg".into(), jpeg[..jpeg.len() / 2].to_vec());
    files
}

/// The cases every list contains, with the status each must end with.
fn cases(server: &TestServer) -> Vec<(String, Option<&'static str>, &'static str)> {
    vec![
        (server.url("files/astronaut.jpg"), Some("an astronaut"), "ok"),
        (server.url("files/chelsea.png"), Some("a cat"), "ok"),
        (server.url("files/coffee.webp"), None, "ok"),
        (server.url("files/camera-small.png"), Some("a man with a camera"), "ok"),
        (server.url("missing"), Some("gone"), "http_error"),
        (server.url("stall.jpg"), Some("slow"), "timeout"),
        (server.url("html.jpg"), Some("soft 404"), "not_an_image"),
        (server.url("files/truncated.jpg"), Some("cut in half"), "decode_error"),
        ("ftp://127.0.0.1/a.jpg".to_string(), Some("wrong scheme"), "invalid_url"),
    ]
}

fn run_list(list: &Path, extra: &[&str]) -> (std::process::Output, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let model = tiny_captioner();
    let mut args = vec![
        "run",
        list.to_str().unwrap(),
        "--output",
        out.path().to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--timeout",
        "3",
        "--retries",
        "0",
        "--batch-size",
        "3",
        "--allow-private-networks",
    ];
    args.extend_from_slice(extra);
    let output = run_capfilt(&args, &[], RUN_TIMEOUT);
    (output, out)
}

fn assert_statuses(rows: &[HashMap<String, Option<String>>], expected: &[(String, Option<&str>, &str)]) {
    assert_eq!(rows.len(), expected.len(), "one output row per input row");
    for (url, caption, status) in expected {
        let row = rows.iter().find(|r| r["url"].as_deref() == Some(url.as_str())).unwrap_or_else(|| panic!("no row for {url}"));
        assert_eq!(row["status"].as_deref(), Some(*status), "status of {url}: {row:?}");
        assert_eq!(row["caption"].as_deref(), *caption, "web caption of {url}");
        if *status == "ok" {
            let captions = row["captions"].as_deref().unwrap_or("");
            assert!(!captions.trim().is_empty(), "{url} has no generated caption: {row:?}");
            assert!(row["width"].is_some() && row["sha256"].as_deref().is_some_and(|h| h.len() == 64));
        } else {
            assert!(row["error"].as_deref().is_some_and(|e| !e.is_empty()), "{url} failed without an error message");
            assert!(row["captions"].is_none());
        }
    }
}

fn write_file(dir: &Path, name: &str, contents: &[u8]) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn jsonl_list_every_case() {
    let server = image_server(photo_bytes());
    let expected = cases(&server);
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::new();
    for (url, caption, _) in &expected {
        text.push_str(&serde_json::json!({"url": url, "caption": caption, "license": "cc-by"}).to_string());
        text.push('\n');
    }
    let list = write_file(dir.path(), "urls.jsonl", text.as_bytes());

    let (output, out) = run_list(&list, &["--keep-cols", "license", "--decoding", "greedy"]);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));

    let rows = read_shards(out.path());
    assert_statuses(&rows, &expected);
    assert!(rows.iter().all(|r| r["license"].as_deref() == Some("cc-by")));
    let keys: std::collections::HashSet<_> = rows.iter().map(|r| r["key"].clone().unwrap()).collect();
    assert_eq!(keys.len(), rows.len(), "keys are unique");

    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["counts"]["rows"], expected.len());
    assert_eq!(manifest["counts"]["ok"], 4);

    if let Some((rows, columns)) = pyarrow_read(out.path()) {
        assert_eq!(rows, expected.len());
        for column in ["key", "url", "caption", "status", "error", "captions", "license"] {
            assert!(columns.iter().any(|c| c == column), "pyarrow sees no {column} column: {columns:?}");
        }
    }
}

#[test]
fn json_csv_tsv_txt_parquet_and_gzip() {
    let server = image_server(photo_bytes());
    let expected = cases(&server);
    let dir = tempfile::tempdir().unwrap();

    let json: Vec<_> = expected.iter().map(|(u, c, _)| serde_json::json!({"url": u, "caption": c})).collect();
    let json_list = write_file(dir.path(), "bootstrapped.json", serde_json::to_string(&json).unwrap().as_bytes());

    let mut csv = String::from("caption,url\n");
    for (url, caption, _) in &expected {
        csv.push_str(&format!("\"{}\",{}\n", caption.unwrap_or(""), url));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(csv.as_bytes()).unwrap();
    let csv_list = write_file(dir.path(), "urls.csv.gz", &gz.finish().unwrap());

    let mut tsv = String::new();
    for (url, caption, _) in &expected {
        tsv.push_str(&format!("{}\t{}\n", caption.unwrap_or(""), url));
    }
    let tsv_list = write_file(dir.path(), "cc3m.tsv", tsv.as_bytes());

    let txt: String = expected.iter().map(|(u, _, _)| format!("{u}\n")).collect();
    let txt_list = write_file(dir.path(), "urls.txt", txt.as_bytes());

    let parquet_list = dir.path().join("laion.parquet");
    write_laion_parquet(&parquet_list, &expected);

    for (list, extra) in [
        (&json_list, vec![]),
        (&csv_list, vec![]),
        (&tsv_list, vec!["--no-header"]),
        (&txt_list, vec![]),
        (&parquet_list, vec![]),
    ] {
        let mut args = vec!["--decoding", "greedy"];
        args.extend(extra);
        let (output, out) = run_list(list, &args);
        assert!(output.status.success(), "{}: stderr:\n{}", list.display(), String::from_utf8_lossy(&output.stderr));
        let rows = read_shards(out.path());

        let is_txt = list.extension().is_some_and(|e| e == "txt");
        let is_csv_like = list.to_string_lossy().contains(".csv") || list.to_string_lossy().contains(".tsv");
        let adjusted: Vec<(String, Option<&str>, &str)> = expected
            .iter()
            .map(|(u, c, s)| {
                let caption = if is_txt { None } else if is_csv_like { Some(c.unwrap_or("")) } else { *c };
                (u.clone(), caption, *s)
            })
            .collect();
        assert_statuses(&rows, &adjusted);
    }
}

fn write_laion_parquet(path: &Path, expected: &[(String, Option<&str>, &str)]) {
    use arrow::array::{ArrayRef, RecordBatch, StringArray};
    let urls: ArrayRef = Arc::new(StringArray::from(expected.iter().map(|(u, _, _)| Some(u.as_str())).collect::<Vec<_>>()));
    let texts: ArrayRef = Arc::new(StringArray::from(expected.iter().map(|(_, c, _)| *c).collect::<Vec<_>>()));
    let batch = RecordBatch::try_from_iter([("URL", urls), ("TEXT", texts)]).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn shards_split_and_resume() {
    let server = image_server(photo_bytes());
    let dir = tempfile::tempdir().unwrap();
    let text: String = (0..7).map(|i| format!("{}?n={i}\n", server.url("files/chelsea.png"))).collect();
    let list = write_file(dir.path(), "cats.txt", text.as_bytes());

    let (output, out) = run_list(&list, &["--shard-size", "3", "--decoding", "greedy"]);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    let files: Vec<_> = std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(files.iter().filter(|f| f.ends_with(".parquet")).count(), 3, "7 rows in shards of 3: {files:?}");
    let first = read_shards(out.path());
    assert_eq!(first.len(), 7);

    let model = tiny_captioner();
    let args = [
        "run", list.to_str().unwrap(), "--output", out.path().to_str().unwrap(),
        "--model", model.to_str().unwrap(), "--shard-size", "3", "--decoding", "greedy",
        "--allow-private-networks",
    ];
    let again = run_capfilt(&args, &[], RUN_TIMEOUT);
    assert!(again.status.success());
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.path().join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["skipped_shards"].as_array().unwrap().len(), 3, "finished shards are not redone");
    assert_eq!(manifest["counts"]["rows"], 7, "kept shards stay counted in the manifest");
    assert_eq!(manifest["shards"].as_array().unwrap().len(), 3, "kept shards stay listed in the manifest");
    let second = read_shards(out.path());
    let keys = |rows: &[HashMap<String, Option<String>>]| {
        let mut keys: Vec<_> = rows.iter().map(|r| r["key"].clone()).collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&first), keys(&second), "keys are stable across runs");
}

#[test]
fn missing_model_folder_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_file(dir.path(), "urls.txt", b"http://127.0.0.1:9/a.jpg\n");
    let out = dir.path().join("out");
    let args = ["run", list.to_str().unwrap(), "--output", out.to_str().unwrap(), "--model", "./no/such/model"];
    let output = run_capfilt(&args, &[], RUN_TIMEOUT);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not exist"), "{stderr}");
}

#[test]
fn rejected_sizes_keep_width_and_height() {
    let server = image_server(photo_bytes());
    let dir = tempfile::tempdir().unwrap();
    let url = server.url("files/chelsea.png");
    let list = write_file(dir.path(), "urls.txt", format!("{url}\n").as_bytes());

    let (accepted, accepted_out) = run_list(&list, &[]);
    let (rejected, rejected_out) = run_list(&list, &["--min-size", "5000"]);

    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
    assert!(rejected.status.success(), "{}", String::from_utf8_lossy(&rejected.stderr));
    let ok = &read_shards(accepted_out.path())[0];
    let too_small = &read_shards(rejected_out.path())[0];
    assert_eq!(ok["status"].as_deref(), Some("ok"));
    assert_eq!(too_small["status"].as_deref(), Some("too_small"));
    assert!(ok["width"].is_some());
    assert_eq!(too_small["width"], ok["width"]);
    assert_eq!(too_small["height"], ok["height"]);
    assert_eq!(too_small["image_format"].as_deref(), Some("png"));
    assert_eq!(too_small["sha256"], ok["sha256"]);
}

#[test]
fn undecodable_rows_keep_sniffed_format() {
    let server = image_server(photo_bytes());
    let dir = tempfile::tempdir().unwrap();
    let list = write_file(dir.path(), "urls.txt", format!("{}\n{}\n", server.url("files/truncated.jpg"), server.url("html.jpg")).as_bytes());

    let (output, out) = run_list(&list, &[]);

    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows = read_shards(out.path());
    let truncated = rows.iter().find(|r| r["url"].as_deref().is_some_and(|u| u.ends_with("truncated.jpg"))).unwrap();
    let html = rows.iter().find(|r| r["url"].as_deref().is_some_and(|u| u.ends_with("html.jpg"))).unwrap();
    assert_eq!(truncated["status"].as_deref(), Some("decode_error"));
    assert_eq!(truncated["image_format"].as_deref(), Some("jpeg"));
    assert_eq!(html["status"].as_deref(), Some("not_an_image"));
    assert_ne!(html["image_format"].as_deref(), Some("jpeg"), "HTML is not a JPEG whatever its name");
}

/// The test suite runs the default CPU build, which must name the missing CUDA support and the
/// rebuild command rather than fail deep inside candle.
#[test]
fn cuda_device_on_cpu_build_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_file(dir.path(), "urls.txt", b"http://127.0.0.1:9/a.jpg\n");
    let out = dir.path().join("out");
    let model = tiny_captioner();
    let args = ["run", list.to_str().unwrap(), "--output", out.to_str().unwrap(), "--model", model.to_str().unwrap(), "--device", "cuda:1"];

    let output = run_capfilt(&args, &[], RUN_TIMEOUT);

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("device cuda:1 is not available"), "{stderr}");
    assert!(stderr.contains("--features cuda"), "{stderr}");
    assert!(!out.exists(), "the rejected run must not create its output folder");
}

#[test]
fn hub_model_downloads_then_loads_offline() {
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let hub = hub_server("capfilt-test/blip-tiny", &tiny_captioner(), commit);
    let server = image_server(photo_bytes());
    let dir = tempfile::tempdir().unwrap();
    let list = write_file(dir.path(), "urls.txt", format!("{}\n", server.url("files/chelsea.png")).as_bytes());
    let hf_home = dir.path().join("hf");
    let out = dir.path().join("out");
    let endpoint = format!("http://{}", hub.addr);

    let args = [
        "run", list.to_str().unwrap(), "--output", out.to_str().unwrap(),
        "--model", "capfilt-test/blip-tiny", "--decoding", "greedy", "--allow-private-networks",
    ];
    let env = [("HF_ENDPOINT", endpoint.as_str()), ("HF_HOME", hf_home.to_str().unwrap())];
    let output = run_capfilt(&args, &env, RUN_TIMEOUT);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["model"]["source"], "hub");
    assert_eq!(manifest["model"]["commit"], commit);
    drop(hub);

    let offline_out = dir.path().join("offline");
    let args = [
        "run", list.to_str().unwrap(), "--output", offline_out.to_str().unwrap(),
        "--model", "capfilt-test/blip-tiny", "--decoding", "greedy", "--offline", "--allow-private-networks",
    ];
    let output = run_capfilt(&args, &[("HF_HOME", hf_home.to_str().unwrap())], RUN_TIMEOUT);
    assert!(output.status.success(), "offline run: stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(read_shards(&offline_out).len(), 1);
}

/// Encodes the astronaut photo scaled up to a 2048×1536 JPEG, large enough for a reduced-scale
/// decode.
fn large_jpeg() -> Vec<u8> {
    let photo = image::open(fixtures().join("photos/astronaut.jpg")).unwrap();
    let large = photo.resize_exact(2048, 1536, image::imageops::FilterType::Triangle);
    let mut bytes = std::io::Cursor::new(Vec::new());
    large.write_to(&mut bytes, image::ImageFormat::Jpeg).unwrap();
    bytes.into_inner()
}

#[test]
fn jpeg_dct_scaling_keeps_source_size() {
    let files = HashMap::from([("large.jpg".to_string(), large_jpeg())]);
    let server = image_server(files);
    let dir = tempfile::tempdir().unwrap();
    let list = write_file(dir.path(), "urls.txt", format!("{}\n", server.url("files/large.jpg")).as_bytes());

    let (scaled, scaled_out) = run_list(&list, &["--jpeg-dct-scaling"]);
    let (full, full_out) = run_list(&list, &[]);

    assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
    assert!(full.status.success(), "{}", String::from_utf8_lossy(&full.stderr));
    for out in [&scaled_out, &full_out] {
        let rows = read_shards(out.path());
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["status"].as_deref(), Some("ok"));
        assert_eq!(rows[0]["width"].as_deref(), Some("2048"), "the width stored in the file");
        assert_eq!(rows[0]["height"].as_deref(), Some("1536"), "the height stored in the file");
    }
    let scaled_metadata = file_metadata(scaled_out.path());
    let full_metadata = file_metadata(full_out.path());
    assert!(scaled_metadata.contains_key("capfilt.image.jpeg_decode"));
    assert!(!full_metadata.contains_key("capfilt.image.jpeg_decode"));
}
