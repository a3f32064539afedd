//! `capfilt run` on lists that the web writes: the same image on many rows, URLs and captions
//! that break naive parsers, rows without a URL, passwords in URLs and tokens in the
//! environment, and keys that look like paths. Every run is served from loopback and every shard
//! is read back.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Router;
use capfilt::fetch::{locate, DownloadConfig, Fetcher, ImageLocation};
use capfilt::status::RowStatus;
use common::*;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

type Row = HashMap<String, Option<String>>;

/// Requests by path and query exactly as the server received them (percent-encoded).
#[derive(Default)]
struct Seen {
    requests: Mutex<HashMap<String, usize>>,
}

impl Seen {
    fn count(&self, path_and_query: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .get(path_and_query)
            .copied()
            .unwrap_or(0)
    }

    fn total(&self) -> usize {
        self.requests.lock().unwrap().values().sum()
    }
}

/// Serves the cat photo under any `/img/...` path and 404 elsewhere, both after `delay`, a
/// redirect loop under `/loop/...`, and URL lists under `/lists/{name}`.
struct ListServer {
    server: TestServer,
    seen: Arc<Seen>,
    state: Arc<ServerState>,
}

impl ListServer {
    /// Serves `text` at `/lists/{name}`; lists name the server's own port, so they are added
    /// once it runs.
    fn add_list(&self, name: &str, text: String) {
        self.state
            .lists
            .lock()
            .unwrap()
            .insert(name.to_string(), text);
    }
}

struct ServerState {
    seen: Arc<Seen>,
    delay: Duration,
    lists: Mutex<HashMap<String, String>>,
}

fn list_server(delay: Duration) -> ListServer {
    let seen = Arc::new(Seen::default());
    let state = Arc::new(ServerState {
        seen: seen.clone(),
        delay,
        lists: Mutex::default(),
    });
    let router = Router::new().fallback(answer).with_state(state.clone());
    ListServer {
        server: TestServer::start(router),
        seen,
        state,
    }
}

async fn answer(State(state): State<Arc<ServerState>>, uri: Uri) -> Response {
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    *state
        .seen
        .requests
        .lock()
        .unwrap()
        .entry(path_and_query)
        .or_default() += 1;

    let path = uri.path();
    if let Some(name) = path.strip_prefix("/lists/") {
        return match state.lists.lock().unwrap().get(name) {
            Some(text) => text.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    if path.starts_with("/loop/") {
        let next = if path == "/loop/a" {
            "/loop/b"
        } else {
            "/loop/a"
        };
        return Redirect::to(next).into_response();
    }
    // Both responses wait, so rows that share a URL are in flight together.
    tokio::time::sleep(state.delay).await;
    if path.starts_with("/img/") {
        return cat_png().into_response();
    }
    StatusCode::NOT_FOUND.into_response()
}

fn cat_png() -> Vec<u8> {
    std::fs::read(fixtures().join("photos/chelsea.png")).unwrap()
}

fn tiny_filter() -> PathBuf {
    fixtures().join("models/blip-tiny-itm")
}

fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Runs `capfilt run LIST --output OUT` on the tiny model with short deadlines and loopback
/// allowed, and checks that it succeeded.
fn run_ok(list: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
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
        "--timeout",
        "5",
        "--retries",
        "0",
        "--allow-private-networks",
    ];
    args.extend_from_slice(extra);
    let output = run_capfilt(&args, &[], RUN_TIMEOUT);
    assert!(
        output.status.success(),
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn manifest(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("_manifest.json")).unwrap()).unwrap()
}

fn by_key(rows: &[Row]) -> HashMap<String, Row> {
    rows.iter()
        .map(|r| (r["key"].clone().unwrap(), r.clone()))
        .collect()
}

fn text<'a>(row: &'a Row, column: &str) -> Option<&'a str> {
    row.get(column).and_then(|v| v.as_deref())
}

fn web_itm(row: &Row) -> f32 {
    text(row, "web_itm")
        .unwrap_or_else(|| panic!("no web_itm: {row:?}"))
        .parse()
        .unwrap()
}

#[test]
fn shared_url_fetched_once_and_each_row_scored() {
    let ls = list_server(Duration::from_millis(300));
    let s = &ls.server;
    // COCO style: one image, several captions; and a broken URL repeated.
    let rows = [
        (
            "a1",
            s.url("img/a.png"),
            Some("a tabby cat lying on a blanket"),
        ),
        (
            "a2",
            s.url("img/a.png"),
            Some("a red car parked on the street"),
        ),
        ("b1", s.url("img/b.png"), None),
        ("c1", s.url("missing/c.jpg"), Some("gone")),
        (
            "a3",
            s.url("img/a.png"),
            Some("two dogs playing in the snow"),
        ),
        ("c2", s.url("missing/c.jpg"), Some("gone again")),
        ("b2", s.url("img/b.png"), Some("a cat")),
        ("d1", s.url("img/d.png"), Some("a kitten")),
        ("c3", s.url("missing/c.jpg"), None),
    ];
    let dir = tempfile::tempdir().unwrap();
    let jsonl: String = rows
        .iter()
        .map(|(key, url, caption)| {
            serde_json::json!({"id": key, "url": url, "caption": caption}).to_string() + "\n"
        })
        .collect();
    let list = write_file(dir.path(), "coco.jsonl", &jsonl);
    let out = dir.path().join("out");
    let filter = tiny_filter();
    let filter_args = [
        "--filter",
        "--filter-model",
        filter.to_str().unwrap(),
        "--key-col",
        "id",
        "--batch-size",
        "4",
    ];

    let mut args = filter_args.to_vec();
    args.extend(["--shard-size", "4"]);
    let output = run_ok(&list, &out, &args);

    for path in ["/img/a.png", "/img/b.png", "/missing/c.jpg", "/img/d.png"] {
        assert_eq!(ls.seen.count(path), 1, "{path} requested once");
    }
    assert_eq!(ls.seen.total(), 4);

    let got = by_key(&read_shards(&out));
    assert_eq!(got.len(), rows.len(), "every row answered");
    for (key, url, caption) in &rows {
        let row = &got[*key];
        assert_eq!(text(row, "url"), Some(url.as_str()), "{key}");
        assert_eq!(
            text(row, "caption"),
            *caption,
            "{key} keeps its own web caption"
        );
        assert_eq!(
            row["web_itm"].is_some(),
            caption.is_some() && !key.starts_with('c'),
            "{key}: {row:?}"
        );
    }

    let shared = ["a1", "a2", "a3"].map(|k| &got[k]);
    for row in &shared {
        assert_eq!(text(row, "status"), Some("ok"));
        for column in [
            "captions",
            "caption_itm",
            "sha256",
            "width",
            "height",
            "image_format",
        ] {
            assert!(row[column].is_some(), "{column} missing: {row:?}");
            assert_eq!(
                row[column], shared[0][column],
                "{column} is shared by rows of one image"
            );
        }
    }
    assert_eq!(got["b1"]["captions"], got["b2"]["captions"]);
    for key in ["c1", "c2", "c3"] {
        assert_eq!(text(&got[key], "status"), Some("http_error"), "{key}");
        assert_eq!(text(&got[key], "error"), Some("HTTP 404"), "{key}");
    }

    let summary = manifest(&out);
    assert_eq!(summary["downloads"], 4);
    assert_eq!(summary["deduplicated_rows"], 5);
    assert_eq!(summary["counts"]["rows"], 9);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("4 downloads (5 rows shared another row's download)"),
        "{stderr}"
    );

    // Each row's score must be its own caption's: the same captions on distinct URLs (scored
    // one per image) give the same numbers.
    let alone_jsonl: String = rows
        .iter()
        .filter(|(key, _, caption)| key.starts_with('a') && caption.is_some())
        .map(|(key, url, caption)| {
            serde_json::json!({"id": key, "url": format!("{url}?alone={key}"), "caption": caption})
                .to_string()
                + "\n"
        })
        .collect();
    let alone_list = write_file(dir.path(), "alone.jsonl", &alone_jsonl);
    let alone_out = dir.path().join("alone");
    run_ok(&alone_list, &alone_out, &filter_args);
    let alone = by_key(&read_shards(&alone_out));
    for key in ["a1", "a2", "a3"] {
        let (shared_score, own_score) = (web_itm(&got[key]), web_itm(&alone[key]));
        assert!(
            (shared_score - own_score).abs() < 1e-4,
            "{key}: {shared_score} shared, {own_score} alone"
        );
    }
    assert_eq!(manifest(&alone_out)["deduplicated_rows"], 0);
}

/// One `(line, expected status)` per row of a plain text list; the URL column must equal the line.
fn odd_text_lines(s: &TestServer) -> Vec<(String, &'static str)> {
    let long_query = "x".repeat(10_000);
    vec![
        (s.url("img/with,commas,in,path.png"), "ok"),
        (s.url("img/quote\"in\"path.png"), "ok"),
        (s.url("img/amp.png?a=1&amp;b=2"), "ok"),
        (s.url("img/tab\there.png"), "ok"),
        (s.url("img/ünïcödé/猫.png"), "ok"),
        (s.url("img/already%20encoded%2Fslash.png"), "ok"),
        (s.url("img/space in path.png"), "ok"),
        (s.url(&format!("img/long.png?q={long_query}")), "ok"),
        (s.url("missing/x.png"), "http_error"),
        ("http://[::1".to_string(), "invalid_url"),
        ("javascript:alert(1)".to_string(), "invalid_url"),
        ("null".to_string(), "missing_url"),
    ]
}

#[test]
fn odd_urls_in_a_text_list() {
    let ls = list_server(Duration::ZERO);
    let lines = odd_text_lines(&ls.server);
    let dir = tempfile::tempdir().unwrap();
    let body: String = lines
        .iter()
        .map(|(line, _)| format!("{line}\n"))
        .collect::<String>()
        + "   \n\t\n";
    let list = write_file(dir.path(), "odd.txt", &body);
    let out = dir.path().join("out");

    run_ok(&list, &out, &[]);

    let rows = read_shards(&out);
    assert_eq!(rows.len(), lines.len(), "one row per non-blank line");
    let mut statuses: Vec<&str> = rows.iter().filter_map(|r| text(r, "status")).collect();
    let mut expected: Vec<&str> = lines.iter().map(|(_, status)| *status).collect();
    statuses.sort();
    expected.sort();
    assert_eq!(statuses, expected);
    for row in rows.iter().filter(|r| text(r, "status") != Some("ok")) {
        assert!(
            text(row, "error").is_some_and(|e| !e.is_empty()),
            "failed without an error: {row:?}"
        );
    }
    for (line, status) in lines
        .iter()
        .filter(|(line, _)| line.starts_with("http://127.0.0.1"))
    {
        let row = rows
            .iter()
            .find(|r| text(r, "url") == Some(line.trim()))
            .unwrap_or_else(|| panic!("no row for {line:.80}"));
        assert_eq!(text(row, "status"), Some(*status), "{line:.80}: {row:?}");
    }

    // The URL as sent: commas and `&amp;` kept, quotes, spaces and Unicode percent-encoded, the
    // tab dropped as WHATWG parsers do, existing escapes left alone.
    for sent in [
        "/img/with,commas,in,path.png",
        "/img/quote%22in%22path.png",
        "/img/amp.png?a=1&amp;b=2",
        "/img/tabhere.png",
        "/img/%C3%BCn%C3%AFc%C3%B6d%C3%A9/%E7%8C%AB.png",
        "/img/already%20encoded%2Fslash.png",
        "/img/space%20in%20path.png",
    ] {
        assert_eq!(
            ls.seen.count(sent),
            1,
            "{sent} requested once: {:?}",
            ls.seen.requests.lock().unwrap().keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        ls.seen
            .count(&format!("/img/long.png?q={}", "x".repeat(10_000))),
        1,
        "the 10 kB URL was sent whole"
    );
}

#[test]
fn quoted_fields_in_csv_and_tsv() {
    let ls = list_server(Duration::ZERO);
    let s = &ls.server;
    let dir = tempfile::tempdir().unwrap();
    let csv = format!(
        "id,url,caption\n\
         k1,\"{}\",\"a caption with \"\"quotes\"\", and a comma\"\n\
         k2,{},plain\n\
         k3,\"{}\",\"a caption over\ntwo lines\"\n\
         k4,,no URL here\n\
         k5,\"   \",blank URL\n\
         k6\n",
        s.url("img/a,b.png"),
        s.url("img/plain.png"),
        s.url("img/multi.png"),
    );
    let tsv = format!(
        "id\turl\tcaption\n\
         t1\t\"{}\"\t\"quoted\ttab, and \"\"quotes\"\"\"\n\
         t2\t{}\t&amp; entities &lt;b&gt;\n\
         t3\tNULL\tnull marker\n",
        s.url("img/tab\tin.png"),
        s.url("img/entities.png"),
    );
    let csv_list = write_file(dir.path(), "quoted.csv", &csv);
    let tsv_list = write_file(dir.path(), "quoted.tsv", &tsv);

    let csv_out = dir.path().join("csv");
    run_ok(&csv_list, &csv_out, &["--key-col", "id"]);
    let tsv_out = dir.path().join("tsv");
    run_ok(&tsv_list, &tsv_out, &["--key-col", "id"]);

    let mut got = by_key(&read_shards(&csv_out));
    got.extend(by_key(&read_shards(&tsv_out)));
    let expected = [
        ("k1", "ok", Some("a caption with \"quotes\", and a comma")),
        ("k2", "ok", Some("plain")),
        ("k3", "ok", Some("a caption over\ntwo lines")),
        ("k4", "missing_url", Some("no URL here")),
        ("k5", "missing_url", Some("blank URL")),
        ("t1", "ok", Some("quoted\ttab, and \"quotes\"")),
        ("t2", "ok", Some("&amp; entities &lt;b&gt;")),
        ("t3", "missing_url", Some("null marker")),
    ];
    for (key, status, caption) in expected {
        let row = got
            .get(key)
            .unwrap_or_else(|| panic!("no row {key}: {:?}", got.keys().collect::<Vec<_>>()));
        assert_eq!(text(row, "status"), Some(status), "{key}: {row:?}");
        assert_eq!(text(row, "caption"), caption, "{key}");
    }
    assert_eq!(text(&got["k1"], "url"), Some(s.url("img/a,b.png").as_str()));

    // The short row has no URL cell: it still gets a row with a status and an error.
    let short: Vec<&Row> = got
        .values()
        .filter(|r| !expected.iter().any(|(k, _, _)| text(r, "key") == Some(*k)))
        .collect();
    assert_eq!(short.len(), 1, "{short:?}");
    assert_ne!(text(short[0], "status"), Some("ok"));
    assert!(
        text(short[0], "error").is_some_and(|e| e.contains("line 8")),
        "{short:?}"
    );
    assert_eq!(ls.seen.count("/img/a,b.png"), 1);
    assert_eq!(ls.seen.count("/img/tabin.png"), 1);
}

#[test]
fn odd_captions_and_rows_without_url() {
    let ls = list_server(Duration::ZERO);
    let s = &ls.server;
    let dir = tempfile::tempdir().unwrap();
    let long_caption = "a very long caption ".repeat(5_000);
    assert!(long_caption.len() >= 100_000);
    let rows = [
        serde_json::json!({"id": "empty", "url": s.url("img/1.png"), "caption": ""}),
        serde_json::json!({"id": "blank", "url": s.url("img/2.png"), "caption": " \t \n "}),
        serde_json::json!({"id": "long", "url": s.url("img/3.png"), "caption": long_caption}),
        serde_json::json!({"id": "no-url-key", "caption": "the URL key is absent"}),
        serde_json::json!({"id": "null-url", "url": null, "caption": "the URL is null"}),
        serde_json::json!({"id": "empty-url", "url": "", "caption": "the URL is empty"}),
        serde_json::json!({"id": "number-url", "url": 12345, "caption": "the URL is a number"}),
    ];
    let jsonl: String = rows
        .iter()
        .map(|r| r.to_string() + "\n")
        .collect::<String>()
        + "{\"id\": \"cut\", \"url\": \n";
    let list = write_file(dir.path(), "odd.jsonl", &jsonl);
    let out = dir.path().join("out");
    let filter = tiny_filter();

    run_ok(
        &list,
        &out,
        &[
            "--key-col",
            "id",
            "--filter",
            "--filter-model",
            filter.to_str().unwrap(),
        ],
    );

    let got = by_key(&read_shards(&out));
    assert_eq!(
        got.len(),
        rows.len() + 1,
        "{:?}",
        got.keys().collect::<Vec<_>>()
    );
    for key in ["empty", "blank", "long"] {
        assert_eq!(
            text(&got[key], "status"),
            Some("ok"),
            "{key}: {:?}",
            got[key]
        );
    }
    assert_eq!(
        text(&got["long"], "caption").map(str::len),
        Some(long_caption.len()),
        "the long caption is stored whole"
    );
    assert!((0.0..=1.0).contains(&web_itm(&got["long"])));
    assert_eq!(text(&got["blank"], "caption"), Some(" \t \n "));
    for key in ["empty", "blank"] {
        assert_eq!(text(&got[key], "web_itm"), None, "{key}: a blank web caption is not scored");
        assert_eq!(text(&got[key], "keep_web"), None, "{key}: a blank web caption is never kept");
    }
    for key in ["no-url-key", "null-url", "empty-url"] {
        assert_eq!(
            text(&got[key], "status"),
            Some("missing_url"),
            "{key}: {:?}",
            got[key]
        );
        assert!(
            text(&got[key], "error").is_some_and(|e| e.contains("missing URL")),
            "{key}"
        );
    }
    let number = &got["number-url"];
    assert_ne!(text(number, "status"), Some("ok"), "{number:?}");
    assert!(text(number, "error").is_some());
    let cut = got
        .values()
        .find(|r| text(r, "status") == Some("invalid_row"))
        .expect("the cut line has a row");
    assert!(
        text(cut, "error").is_some_and(|e| e.contains("line 8")),
        "{cut:?}"
    );
}

/// Resolves names from a fixed table without any network lookup and records what it was asked.
struct TableResolver {
    answers: HashMap<String, SocketAddr>,
    asked: Mutex<Vec<String>>,
}

impl Resolve for TableResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let name = name.as_str().to_string();
        self.asked.lock().unwrap().push(name.clone());
        let answer = self.answers.get(&name).copied();
        Box::pin(async move {
            match answer {
                Some(addr) => Ok(Box::new(std::iter::once(addr)) as Addrs),
                None => Err(format!("{name} is not in the test table").into()),
            }
        })
    }
}

#[test]
fn idn_hosts_resolve_as_punycode() {
    let ls = list_server(Duration::ZERO);
    let port = ls.server.addr.port();
    let url = format!("http://Bücher.test:{port}/img/idn.png");

    let Ok(ImageLocation::Http(parsed)) = locate(&url, None) else {
        panic!("{url} does not parse")
    };
    assert_eq!(parsed.host_str(), Some("xn--bcher-kva.test"));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let resolver = || {
        let answers = HashMap::from([(
            "xn--bcher-kva.test".to_string(),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )]);
        Arc::new(TableResolver {
            answers,
            asked: Mutex::default(),
        })
    };
    let fetch = |config: DownloadConfig, resolver: Arc<TableResolver>| {
        let fetcher = Fetcher::with_resolver(config, resolver).unwrap();
        runtime.block_on(fetcher.fetch(&ImageLocation::Http(parsed.clone())))
    };

    let guarded = resolver();
    let error = fetch(
        DownloadConfig {
            retries: 0,
            ..Default::default()
        },
        guarded.clone(),
    )
    .unwrap_err();
    assert_eq!(error.status, RowStatus::Blocked, "{error:?}");
    assert_eq!(*guarded.asked.lock().unwrap(), ["xn--bcher-kva.test"]);
    assert_eq!(ls.seen.total(), 0, "no request reached the loopback server");

    let open = resolver();
    let config = DownloadConfig {
        allow_private_networks: true,
        retries: 0,
        ..Default::default()
    };
    assert_eq!(fetch(config, open.clone()).unwrap(), cat_png());
    assert_eq!(*open.asked.lock().unwrap(), ["xn--bcher-kva.test"]);
    assert_eq!(ls.seen.count("/img/idn.png"), 1);
    runtime.shutdown_timeout(Duration::from_secs(1));
}

#[test]
fn secrets_stay_out_of_logs_errors_and_manifest() {
    let ls = list_server(Duration::ZERO);
    let port = ls.server.addr.port();
    let rows = [
        format!("http://user:rowsecret1@127.0.0.1:{port}/img/s.png"),
        format!("http://user:rowsecret2@127.0.0.1:{port}/missing/s.png"),
        format!("http://user:rowsecret3@127.0.0.1:{port}/loop/a"),
        "http://user:rowsecret4@127.0.0.1:1/refused.png".to_string(),
        format!("http://rowsecret5@127.0.0.1:{port}/img/token-only.png"),
    ];
    ls.add_list("urls.txt", rows.join("\n") + "\n");
    let hub = hub_server(
        "capfilt-test/blip-tiny",
        &tiny_captioner(),
        "0123456789abcdef0123456789abcdef01234567",
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let input = format!("http://lister:listsecret@127.0.0.1:{port}/lists/urls.txt");
    let endpoint = format!("http://{}", hub.addr);
    let hf_home = dir.path().join("hf");
    let env = [
        ("RUST_LOG", "debug"),
        ("HF_ENDPOINT", endpoint.as_str()),
        ("HF_HOME", hf_home.to_str().unwrap()),
        ("HF_TOKEN", "hf_tokensecret"),
        ("AWS_SECRET_ACCESS_KEY", "awskeysecret"),
    ];
    let args = [
        "--log-format",
        "json",
        "run",
        input.as_str(),
        "--output",
        out.to_str().unwrap(),
        "--model",
        "capfilt-test/blip-tiny",
        "--decoding",
        "greedy",
        "--timeout",
        "3",
        "--retries",
        "1",
        "--allow-private-networks",
    ];

    let output = run_capfilt(&args, &env, RUN_TIMEOUT);
    assert!(
        output.status.success(),
        "stderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let got = read_shards(&out);
    let statuses: BTreeSet<&str> = got.iter().filter_map(|r| text(r, "status")).collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["ok", "http_error", "too_many_redirects", "network_error"]),
        "{got:?}"
    );
    assert_eq!(ls.seen.count("/lists/urls.txt"), 1);
    assert_eq!(ls.seen.count("/img/s.png"), 1);
    let errors: String = got
        .iter()
        .filter_map(|r| text(r, "error"))
        .collect::<Vec<_>>()
        .join("\n");
    let manifest = std::fs::read_to_string(out.join("_manifest.json")).unwrap();
    assert!(
        manifest.contains(&format!("http://***@127.0.0.1:{port}/lists/urls.txt")),
        "{manifest}"
    );
    let logs = [
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ];
    assert!(logs[1].contains("\"level\":\"DEBUG\""), "debug logs are on");
    let places = [
        ("stdout", &logs[0]),
        ("stderr", &logs[1]),
        ("_manifest.json", &manifest),
        ("error column", &errors),
    ];
    assert_no_secrets(&places);

    // The url column keeps each URL as the input gave it.
    assert!(got.iter().any(|r| text(r, "url") == Some(rows[0].as_str())));

    // A failed list download ends the run with an error that names the list without its password.
    let missing = format!("http://lister:listsecret@127.0.0.1:{port}/lists/absent.txt");
    let failed_args = [
        "--log-format",
        "json",
        "run",
        missing.as_str(),
        "--output",
        out.to_str().unwrap(),
        "--allow-private-networks",
    ];
    let failed = run_capfilt(&failed_args, &env, RUN_TIMEOUT);
    assert!(!failed.status.success());
    let stderr = String::from_utf8_lossy(&failed.stderr).into_owned();
    assert!(
        stderr.contains(&format!(
            "http://***@127.0.0.1:{port}/lists/absent.txt: HTTP 404"
        )),
        "{stderr}"
    );
    assert_no_secrets(&[("stderr of the failed run", &stderr)]);
}

fn assert_no_secrets(places: &[(&str, &String)]) {
    let secrets = ["rowsecret", "listsecret", "hf_tokensecret", "awskeysecret"];
    for (place, content) in places {
        for secret in secrets {
            let at = content.find(secret);
            assert!(
                at.is_none(),
                "{secret} appears in {place}: ...{}...",
                &content[at.unwrap().saturating_sub(200)..]
            );
        }
    }
}

/// Every file and folder under `root`, relative to it.
fn tree(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            found.insert(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

#[test]
fn keys_and_values_never_name_files() {
    let ls = list_server(Duration::ZERO);
    let parent = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let absolute = elsewhere.path().join("escaped");
    let hostile = [
        "../../etc/capfilt-escape".to_string(),
        "../sibling".to_string(),
        absolute.display().to_string(),
        "a\u{0}b".to_string(),
        "..".to_string(),
        "dir/with/slashes".to_string(),
        ".hidden.parquet.1.tmp".to_string(),
        "_manifest.json".to_string(),
    ];
    let jsonl: String = hostile
        .iter()
        .enumerate()
        .map(|(i, key)| serde_json::json!({"id": key, "url": ls.server.url(&format!("img/{i}.png")), "path": key}).to_string() + "\n")
        .collect();
    std::fs::create_dir(parent.path().join("lists")).unwrap();
    let list = write_file(&parent.path().join("lists"), "..odd name ..jsonl", &jsonl);
    let out = parent.path().join("out");

    run_ok(
        &list,
        &out,
        &[
            "--input-format",
            "jsonl",
            "--key-col",
            "id",
            "--keep-cols",
            "path",
            "--shard-size",
            "3",
        ],
    );

    let got = by_key(&read_shards(&out));
    for key in &hostile {
        let row = got
            .get(key)
            .unwrap_or_else(|| panic!("no row for key {key:?}"));
        assert_eq!(text(row, "status"), Some("ok"), "{key:?}");
        assert_eq!(
            text(row, "path"),
            Some(key.as_str()),
            "kept value stored as given"
        );
    }

    let shard_names = |name: &str| {
        let id = name
            .strip_prefix("out/")
            .and_then(|n| n.strip_suffix(".parquet"))
            .unwrap_or("");
        let (tag, index) = id.split_once('-').unwrap_or(("", ""));
        tag.len() == 12
            && tag.bytes().all(|b| b.is_ascii_hexdigit())
            && index.len() == 5
            && index.bytes().all(|b| b.is_ascii_digit())
    };
    let found = tree(parent.path());
    let unexpected: Vec<&String> = found
        .iter()
        .filter(|p| {
            ![
                "lists",
                "lists/..odd name ..jsonl",
                "out",
                "out/_manifest.json",
            ]
            .contains(&p.as_str())
                && !shard_names(p)
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "written outside the shard files: {unexpected:?}"
    );
    assert_eq!(
        found.iter().filter(|p| shard_names(p)).count(),
        3,
        "8 rows in shards of 3: {found:?}"
    );
    assert!(
        tree(elsewhere.path()).is_empty(),
        "an absolute key wrote a file"
    );
    assert!(
        !parent.path().join("../etc/capfilt-escape").exists()
            && !parent.path().join("../sibling").exists()
    );
}

#[tokio::test]
async fn local_files_rejected_when_turned_off() {
    let photo = fixtures().join("photos/astronaut.jpg");
    let file_url = format!("file://{}", photo.display());
    let locations = [locate(photo.to_str().unwrap(), None).unwrap(), locate(&file_url, None).unwrap()];

    let closed = Fetcher::new(DownloadConfig { allow_local_files: false, ..DownloadConfig::default() }).unwrap();
    for location in &locations {
        let error = closed.fetch(location).await.unwrap_err();
        assert_eq!(error.status, RowStatus::Blocked, "{location:?}");
        assert!(error.message.contains("--no-local-files"), "{}", error.message);
    }

    let open = Fetcher::new(DownloadConfig::default()).unwrap();
    for location in &locations {
        let bytes = open.fetch(location).await.unwrap();
        assert_eq!(bytes.len() as u64, std::fs::metadata(&photo).unwrap().len());
    }
}
