//! Shard boundaries and ids.

mod common;

use capfilt_coordinator::{
    input_tag, read_rows, shards, InputError, InputFile, ReadOptions, Shard,
};
use common::*;

fn jsonl(rows: usize) -> String {
    (0..rows)
        .map(|i| format!("{{\"url\": \"http://a.example/{i}.jpg\"}}\n"))
        .collect()
}

fn all_shards(input: &InputFile, size: usize) -> Vec<Shard> {
    let reader = read_rows(input, &ReadOptions::default()).unwrap();
    shards(reader, input, size).map(Result::unwrap).collect()
}

#[test]
fn shards_fixed_row_counts() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "ten.jsonl", jsonl(10).as_bytes());
    let input = InputFile::new(&path, "lists/ten.jsonl");

    let cut = all_shards(&input, 4);

    let tag = input_tag("lists/ten.jsonl");
    let outline: Vec<_> = cut
        .iter()
        .map(|s| (s.id.clone(), s.index, s.first_row, s.rows.len()))
        .collect();
    assert_eq!(
        outline,
        vec![
            (format!("{tag}-00000"), 0, 0, 4),
            (format!("{tag}-00001"), 1, 4, 4),
            (format!("{tag}-00002"), 2, 8, 2),
        ]
    );
    let indices: Vec<u64> = cut
        .iter()
        .flat_map(|s| s.rows.iter().map(|r| r.row_index))
        .collect();
    assert_eq!(indices, (0..10).collect::<Vec<_>>());
    assert!(cut.iter().all(|s| s.input_label == "lists/ten.jsonl"));
}

#[test]
fn shards_exact_multiple_no_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "eight.jsonl", jsonl(8).as_bytes());

    let cut = all_shards(&InputFile::local(&path), 4);

    assert_eq!(cut.len(), 2);
    assert_eq!(cut[1].rows.len(), 4);
}

#[test]
fn shards_stable_across_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_laion_parquet(dir.path(), "p.parquet", 2_500, 700);
    let input = InputFile::new(&path, "s3://laion/part-00007.parquet");

    let first = all_shards(&input, 1_000);
    let second = all_shards(&input, 1_000);

    assert_eq!(first.len(), 3);
    assert_eq!(first, second);
    assert!(first[2].id.ends_with("-00002"));
}

#[test]
fn shard_ids_follow_label() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.jsonl", jsonl(3).as_bytes());
    let b = write(dir.path(), "b.jsonl", jsonl(3).as_bytes());

    let same_label_a = all_shards(&InputFile::new(&a, "urls.jsonl"), 2);
    let same_label_b = all_shards(&InputFile::new(&b, "urls.jsonl"), 2);
    let other_label = all_shards(&InputFile::new(&a, "other.jsonl"), 2);

    assert_eq!(same_label_a[1].id, same_label_b[1].id);
    assert_ne!(same_label_a[0].id, other_label[0].id);
    assert_ne!(same_label_a[0].rows[0].key, other_label[0].rows[0].key);
}

#[test]
fn shard_size_zero_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "z.jsonl", jsonl(3).as_bytes());
    let input = InputFile::local(&path);
    let reader = read_rows(&input, &ReadOptions::default()).unwrap();

    let results: Vec<_> = shards(reader, &input, 0).collect();

    assert_eq!(results.len(), 1);
    assert!(matches!(results[0], Err(InputError::ZeroShardSize)));
}

#[test]
fn shards_empty_input_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "e.jsonl", b"\n\n");

    assert!(all_shards(&InputFile::local(&path), 5).is_empty());
}

#[test]
fn shards_failure_drops_partial() {
    let text = jsonl(50_000);
    let compressed = gzip(text.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "cut.jsonl.gz",
        &compressed[..compressed.len() / 2],
    );
    let input = InputFile::local(&path);
    let reader = read_rows(&input, &ReadOptions::default()).unwrap();

    let results: Vec<_> = shards(reader, &input, 1_000).collect();

    let (last, complete) = results.split_last().unwrap();
    let last_error = last.as_ref().err();
    assert!(
        matches!(last_error, Some(InputError::Io { .. })),
        "{last_error:?}"
    );
    assert!(!complete.is_empty());
    let sizes: Vec<Option<usize>> = complete
        .iter()
        .map(|shard| shard.as_ref().ok().map(|s| s.rows.len()))
        .collect();
    assert_eq!(sizes, vec![Some(1_000); complete.len()]);
}
