//! `capfilt inspect` on shard files written by the sink, and its errors on files that are
//! missing, folders, or not Parquet at all.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use capfilt::sink::{write_shard, OutputRow};
use capfilt::status::RowStatus;
use common::run_capfilt;

const TIMEOUT: Duration = Duration::from_secs(60);

fn rows() -> Vec<OutputRow> {
    let ok = |key: &str, caption: &str| OutputRow {
        key: key.into(),
        url: Some(format!("http://127.0.0.1:1/{key}.jpg")),
        caption: Some(caption.into()),
        status: Some(RowStatus::Ok),
        width: Some(640),
        height: Some(480),
        captions: Some(vec!["a dog on a beach".into()]),
        caption_stops: Some(vec!["end_token".into()]),
        web_itm: Some(0.75),
        caption_itm: Some(vec![0.25]),
        keep_web: Some(true),
        keep_captions: Some(vec![false]),
        kept: vec![Some("cc-by".into())],
        ..Default::default()
    };
    vec![
        ok("row-a", "a dog"),
        // An escape sequence that would clear the terminal if printed raw.
        ok("row-b", "clear\u{1b}[2Jscreen"),
        OutputRow {
            key: "row-c".into(),
            status: Some(RowStatus::MissingUrl),
            error: Some("the row has no URL".into()),
            kept: vec![None],
            ..Default::default()
        },
    ]
}

fn write_fixture(dir: &Path) -> std::path::PathBuf {
    let metadata = HashMap::from([
        ("capfilt.version".to_string(), "9.9.9".to_string()),
        ("capfilt.filter.threshold".to_string(), "0.5".to_string()),
    ]);
    write_shard(dir, "shard-00000", &["license".into()], &rows(), &metadata).unwrap()
}

fn inspect(args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["inspect"];
    all.extend_from_slice(args);
    let output = run_capfilt(&all, &[], TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.success(), stdout, stderr)
}

#[test]
fn inspect_prints_schema_metadata_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());

    let (ok, stdout, stderr) = inspect(&[path.to_str().unwrap(), "--rows", "2"]);

    assert!(ok, "inspect failed: {stderr}");
    assert!(stdout.contains("rows: 3\n"), "{stdout}");
    assert!(
        stdout.contains("schema (18 columns):"),
        "17 fixed columns and one kept column: {stdout}"
    );
    assert!(stdout.contains("  key: Utf8, not null\n"), "{stdout}");
    assert!(stdout.contains("  caption_itm: List("), "{stdout}");
    assert!(stdout.contains("row groups: 1\n  0: 3 rows,"), "{stdout}");
    assert!(
        stdout.contains("  capfilt.filter.threshold: 0.5\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  capfilt.version: 9.9.9\n"), "{stdout}");
    assert!(
        stdout.contains("other metadata keys: ARROW:schema"),
        "{stdout}"
    );
}

#[test]
fn inspect_prints_requested_rows_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());

    let (ok, stdout, stderr) = inspect(&[path.to_str().unwrap(), "--rows", "2"]);

    assert!(ok, "inspect failed: {stderr}");
    assert!(stdout.contains("\nrow 0:\n  key: row-a\n"), "{stdout}");
    assert!(stdout.contains("  web_itm: 0.75\n"), "{stdout}");
    assert!(stdout.contains("  keep_captions: [false]\n"), "{stdout}");
    assert!(stdout.contains("  license: cc-by\n"), "{stdout}");
    assert!(stdout.contains("\nrow 1:\n"), "{stdout}");
    assert!(
        !stdout.contains("row 2:"),
        "only two rows were requested: {stdout}"
    );
    assert!(!stdout.contains("row-c"), "{stdout}");
}

#[test]
fn inspect_escapes_control_characters() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());

    let (ok, stdout, stderr) = inspect(&[path.to_str().unwrap(), "--rows", "3"]);

    assert!(ok, "inspect failed: {stderr}");
    assert!(
        !stdout.contains('\u{1b}'),
        "a raw escape character reached the terminal"
    );
    assert!(stdout.contains("clear\\u{1b}[2Jscreen"), "{stdout}");
    assert!(
        stdout.contains("  status: missing_url\n  error: the row has no URL\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  captions: null\n"), "{stdout}");
}

#[test]
fn inspect_zero_rows_prints_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_fixture(dir.path());

    let (ok, stdout, _) = inspect(&[path.to_str().unwrap(), "--rows", "0"]);

    assert!(ok);
    assert!(stdout.contains("capfilt metadata:"), "{stdout}");
    assert!(!stdout.contains("row 0:"), "{stdout}");
}

#[test]
fn inspect_missing_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.parquet");

    let (ok, stdout, stderr) = inspect(&[path.to_str().unwrap()]);

    assert!(!ok, "inspect of a missing file succeeded: {stdout}");
    assert!(
        stderr.contains(&format!("failed to open {}", path.display())),
        "{stderr}"
    );
    assert!(stderr.contains("No such file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn inspect_non_parquet_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("urls.parquet");
    std::fs::write(&text, "http://127.0.0.1/a.jpg\n").unwrap();
    let empty = dir.path().join("empty.parquet");
    std::fs::write(&empty, "").unwrap();

    for path in [&text, &empty] {
        let (ok, _, stderr) = inspect(&[path.to_str().unwrap()]);
        assert!(!ok, "{} was accepted as Parquet", path.display());
        assert!(
            stderr.contains(&format!("{} is not a valid Parquet file", path.display())),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn inspect_folder_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();

    let (ok, _, stderr) = inspect(&[dir.path().to_str().unwrap()]);

    assert!(!ok);
    assert!(
        stderr.contains("is a folder; give one .parquet file"),
        "{stderr}"
    );
}
