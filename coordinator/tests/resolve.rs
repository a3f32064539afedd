//! Expanding files, folders and globs into input files.

mod common;

use std::path::{Path, PathBuf};

use capfilt_coordinator::{resolve_inputs, InputError};
use common::write;

fn pattern(path: &Path) -> String {
    path.display().to_string()
}

/// Paths relative to `root`, for readable comparisons.
fn relative(root: &Path, paths: Vec<PathBuf>) -> Vec<String> {
    paths
        .iter()
        .map(|p| p.strip_prefix(root).unwrap().display().to_string())
        .collect()
}

fn sample_tree(root: &Path) {
    for name in [
        "data/b.jsonl",
        "data/a.csv.gz",
        "data/sub/c.parquet",
        "data/sub/deeper/d.txt",
        "data/notes.md",
        "data/x.parquet.gz",
        "data/.hidden.jsonl",
        "data/._e.parquet",
        "data/.cache/f.jsonl",
        "parts/part-2",
        "parts/part-1",
        "parts/part-10.tsv",
    ] {
        write(root, name, b"");
    }
}

#[test]
fn folder_known_files_sorted() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(dir.path());

    let found = resolve_inputs(&[pattern(&dir.path().join("data"))]).unwrap();

    assert_eq!(
        relative(dir.path(), found),
        vec![
            "data/a.csv.gz",
            "data/b.jsonl",
            "data/sub/c.parquet",
            "data/sub/deeper/d.txt"
        ]
    );
}

#[test]
fn glob_matches_sorted() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(dir.path());

    let found = resolve_inputs(&[pattern(&dir.path().join("parts/part-*"))]).unwrap();

    assert_eq!(
        relative(dir.path(), found),
        vec!["parts/part-1", "parts/part-10.tsv", "parts/part-2"]
    );
}

#[test]
fn glob_skips_hidden_expands_folders() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(dir.path());

    let found = resolve_inputs(&[pattern(&dir.path().join("data/*"))]).unwrap();

    assert_eq!(
        relative(dir.path(), found),
        vec![
            "data/a.csv.gz",
            "data/b.jsonl",
            "data/notes.md",
            "data/sub/c.parquet",
            "data/sub/deeper/d.txt",
            "data/x.parquet.gz",
        ]
    );
}

#[test]
fn duplicates_keep_first_place() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(dir.path());
    let data = dir.path().join("data");
    let roundabout = data.join("sub/../b.jsonl");

    let found = resolve_inputs(&[
        pattern(&data.join("sub/c.parquet")),
        pattern(&data),
        pattern(&roundabout),
        pattern(&data.join("*.jsonl")),
    ])
    .unwrap();

    assert_eq!(
        relative(dir.path(), found),
        vec![
            "data/sub/c.parquet",
            "data/a.csv.gz",
            "data/b.jsonl",
            "data/sub/deeper/d.txt"
        ]
    );
}

#[test]
fn file_any_name_taken() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(dir.path());
    let notes = dir.path().join("data/notes.md");

    let found = resolve_inputs(&[pattern(&notes)]).unwrap();

    assert_eq!(found, vec![notes]);
}

#[test]
fn no_match_names_pattern() {
    let dir = tempfile::tempdir().unwrap();
    sample_tree(dir.path());
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let data = pattern(&dir.path().join("data"));

    for missing in ["absent.jsonl", "data/*.xml", "empty"] {
        let missing = pattern(&dir.path().join(missing));

        let error = resolve_inputs(&[data.clone(), missing.clone()]).unwrap_err();

        assert!(
            matches!(&error, InputError::NoMatch { pattern } if *pattern == missing),
            "{error}"
        );
        assert!(error.to_string().contains(&missing));
    }
}

#[test]
fn glob_invalid_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let broken = pattern(&dir.path().join("data/[a"));

    let error = resolve_inputs(std::slice::from_ref(&broken)).unwrap_err();

    assert!(
        matches!(&error, InputError::BadPattern { pattern, .. } if *pattern == broken),
        "{error}"
    );
}
