//! Each input format read from real files, plain and gzipped.

mod common;

use capfilt_coordinator::{input_tag, read_rows, InputError, InputFile, InputFormat, ReadOptions};
use common::*;

const JSONL: &str = "{\"url\": \"http://a.example/1.jpg\", \"caption\": \"a dog\"}\n\
\n\
{\"url\": \"https://a.example/2.jpg\", \"caption\": \"a cat\", \"extra\": 1}\n\
   \n\
{\"URL\": \"s3://bucket/3.jpg\", \"TEXT\": \"a bird\"}\n";

#[test]
fn jsonl_blank_lines_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "urls.jsonl", JSONL.as_bytes());
    let gzipped = write_gz(dir.path(), "urls.jsonl.gz", JSONL.as_bytes());

    for path in [plain, gzipped] {
        let rows = rows(&path, &ReadOptions::default());

        assert_eq!(
            urls_and_captions(&rows),
            vec![
                (Some("http://a.example/1.jpg"), Some("a dog")),
                (Some("https://a.example/2.jpg"), Some("a cat")),
                (Some("s3://bucket/3.jpg"), Some("a bird")),
            ],
            "{}",
            path.display()
        );
        let lines: Vec<_> = rows.iter().map(|r| (r.row_index, r.line)).collect();
        assert_eq!(lines, vec![(0, Some(1)), (1, Some(3)), (2, Some(5))]);
        assert!(rows.iter().all(|r| r.problem.is_none()));
    }
}

#[test]
fn default_key_tag_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "urls.jsonl", JSONL.as_bytes());
    let label = "https://lists.example/urls.jsonl";

    let rows = rows_labelled(&path, label, &ReadOptions::default());

    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let tag = input_tag(label);
    assert_eq!(
        keys,
        vec![format!("{tag}:0"), format!("{tag}:1"), format!("{tag}:2")]
    );
}

#[test]
fn json_array_plain_and_gzipped() {
    let text = "[\n  {\"url\": \"http://a.example/1.jpg\", \"caption\": \"one\"},\n  \
                {\"image_url\": \"http://a.example/2.jpg\", \"text\": \"two\"}\n]\n";
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "blip.json", text.as_bytes());
    let gzipped = write_gz(dir.path(), "blip.json.gz", text.as_bytes());

    for path in [plain, gzipped] {
        let rows = rows(&path, &ReadOptions::default());

        assert_eq!(
            urls_and_captions(&rows),
            vec![
                (Some("http://a.example/1.jpg"), Some("one")),
                (Some("http://a.example/2.jpg"), Some("two")),
            ]
        );
        assert_eq!(rows[1].line, Some(3));
    }
}

#[test]
fn json_array_200000_elements() {
    let count = 200_000;
    let mut text = String::from("[\n");
    for i in 0..count {
        let comma = if i + 1 < count { "," } else { "" };
        text.push_str(&format!(
            "{{\"url\":\"http://h.example/{i}.jpg\",\"caption\":\"c {i}\"}}{comma}\n"
        ));
    }
    text.push_str("]\n");
    let dir = tempfile::tempdir().unwrap();
    let path = write_gz(dir.path(), "big.json.gz", text.as_bytes());
    drop(text);

    let mut reader = read_rows(&InputFile::local(&path), &ReadOptions::default()).unwrap();
    let mut seen = 0u64;
    for row in reader.by_ref() {
        assert_eq!(row.row_index, seen);
        assert_eq!(row.line, Some(seen + 2));
        assert_eq!(
            row.url.as_deref(),
            Some(format!("http://h.example/{seen}.jpg").as_str())
        );
        assert!(row.problem.is_none());
        seen += 1;
    }

    assert_eq!(seen, count);
    assert!(reader.take_failure().is_none());
}

#[test]
fn csv_header_quoted_fields() {
    let text = "\u{feff}id,url,caption\n\
                1,http://a.example/1.jpg,\"a dog, running\"\n\
                2,http://a.example/2.jpg,\"say \"\"cheese\"\"\"\n\
                3,http://a.example/3.jpg,\"two\nlines\"\n\
                4,http://a.example/4.jpg,plain\n";
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "list.csv", text.as_bytes());
    let gzipped = write_gz(dir.path(), "list.csv.gz", text.as_bytes());

    for path in [plain, gzipped] {
        let rows = rows(&path, &ReadOptions::default());

        assert_eq!(
            urls_and_captions(&rows),
            vec![
                (Some("http://a.example/1.jpg"), Some("a dog, running")),
                (Some("http://a.example/2.jpg"), Some("say \"cheese\"")),
                (Some("http://a.example/3.jpg"), Some("two\nlines")),
                (Some("http://a.example/4.jpg"), Some("plain")),
            ]
        );
        let lines: Vec<_> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![Some(2), Some(3), Some(4), Some(6)]);
    }
}

#[test]
fn tsv_laion_header() {
    let text = "URL\tTEXT\tWIDTH\r\nhttp://a.example/1.jpg\ta, b\t640\r\nhttp://a.example/2.jpg\t\t480\r\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "laion.tsv", text.as_bytes());
    let opts = ReadOptions {
        keep_cols: vec!["WIDTH".into()],
        ..ReadOptions::default()
    };

    let rows = rows(&path, &opts);

    assert_eq!(
        urls_and_captions(&rows),
        vec![
            (Some("http://a.example/1.jpg"), Some("a, b")),
            (Some("http://a.example/2.jpg"), Some(""))
        ]
    );
    let kept: Vec<_> = rows.iter().map(|r| r.kept.clone()).collect();
    assert_eq!(
        kept,
        vec![vec![Some("640".to_string())], vec![Some("480".to_string())]]
    );
}

#[test]
fn headerless_tsv_caption_then_url() {
    let text = "a man on a horse\thttp://cc.example/1.jpg\n\
                \"quoted\" caption\thttp://cc.example/2.jpg\n\
                \n\
                third\thttp://cc.example/3.jpg\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write_gz(dir.path(), "Train_GCC-training.tsv.gz", text.as_bytes());
    let opts = ReadOptions {
        header: false,
        ..ReadOptions::default()
    };

    let rows = rows(&path, &opts);

    assert_eq!(
        urls_and_captions(&rows),
        vec![
            (Some("http://cc.example/1.jpg"), Some("a man on a horse")),
            (Some("http://cc.example/2.jpg"), Some("quoted caption")),
            (Some("http://cc.example/3.jpg"), Some("third")),
        ]
    );
    assert_eq!(rows[2].line, Some(4));
}

#[test]
fn headerless_columns_by_index() {
    let text = "k1,http://a.example/1.jpg,cap one,x\nk2,http://a.example/2.jpg,cap two,y\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "list.csv", text.as_bytes());
    let opts = ReadOptions {
        header: false,
        url_col: Some("1".into()),
        caption_col: Some("2".into()),
        key_col: Some("0".into()),
        keep_cols: vec!["3".into()],
        ..ReadOptions::default()
    };

    let rows = rows(&path, &opts);

    assert_eq!(rows[1].key, "k2");
    assert_eq!(rows[1].url.as_deref(), Some("http://a.example/2.jpg"));
    assert_eq!(rows[1].caption.as_deref(), Some("cap two"));
    assert_eq!(rows[1].kept, vec![Some("y".to_string())]);
}

#[test]
fn text_list_urls_verbatim() {
    let text = "# exported 2024-01-01\n\
                http://a.example/q?a=1,2&amp;b=\"x\"\n\
                \n\
                   # indented comment\n\
                \thttp://a.example/tab\there.jpg  \n\
                images/local.jpg\r\n";
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "urls.txt", text.as_bytes());
    let gzipped = write_gz(dir.path(), "urls.lst.gz", text.as_bytes());

    for path in [plain, gzipped] {
        let rows = rows(&path, &ReadOptions::default());

        assert_eq!(
            urls_and_captions(&rows),
            vec![
                (Some("http://a.example/q?a=1,2&amp;b=\"x\""), None),
                (Some("http://a.example/tab\there.jpg"), None),
                (Some("images/local.jpg"), None),
            ]
        );
        let lines: Vec<_> = rows.iter().map(|r| r.line).collect();
        assert_eq!(lines, vec![Some(2), Some(5), Some(6)]);
    }
}

#[test]
fn parquet_laion_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_laion_parquet(dir.path(), "part-00000.parquet", 10_000, 3_000);
    let opts = ReadOptions {
        keep_cols: vec!["WIDTH".into(), "SAMPLE_ID".into()],
        ..ReadOptions::default()
    };

    let rows = rows(&path, &opts);

    assert_eq!(rows.len(), 10_000);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.row_index, i as u64);
        assert_eq!(row.line, None);
        assert_eq!(row.url, Some(format!("https://img.example/{i}.jpg")));
        let caption = (i % 3 != 2).then(|| format!("caption {i}"));
        assert_eq!(row.caption, caption, "row {i}");
        let width = (i % 5 != 4).then(|| (100 + i).to_string());
        assert_eq!(
            row.kept,
            vec![width, Some((1000 + i).to_string())],
            "row {i}"
        );
    }
}

#[test]
fn format_option_overrides_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "list.dat", JSONL.as_bytes());
    let opts = ReadOptions {
        format: Some(InputFormat::Jsonl),
        ..ReadOptions::default()
    };

    let rows = rows(&path, &opts);

    assert_eq!(rows.len(), 3);
}

#[test]
fn format_from_download_label() {
    let dir = tempfile::tempdir().unwrap();
    // gzipped, although the local name says neither gzip nor CSV
    let path = write_gz(
        dir.path(),
        "download.part",
        b"url\nhttp://a.example/1.jpg\n",
    );
    let input = InputFile::new(&path, "https://lists.example/urls.csv.gz?token=abc");

    let rows: Vec<_> = read_rows(&input, &ReadOptions::default())
        .unwrap()
        .collect();

    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].url.as_deref(), Some("http://a.example/1.jpg"));
}

#[test]
fn format_unknown_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "list.dat", JSONL.as_bytes());

    let error = read_rows(&InputFile::new(&path, "list.dat"), &ReadOptions::default()).unwrap_err();

    assert!(matches!(&error, InputError::UnknownFormat { label } if label == "list.dat"));
    assert!(error.to_string().starts_with("list.dat: "), "{error}");
}

#[test]
fn open_missing_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.jsonl");

    let error = read_rows(&InputFile::local(&path), &ReadOptions::default()).unwrap_err();

    assert!(matches!(error, InputError::Io { .. }));
    assert!(error.to_string().contains("absent.jsonl"), "{error}");
}

#[test]
fn parquet_gzipped_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = write_laion_parquet(dir.path(), "p.parquet", 10, 10);
    let path = write_gz(dir.path(), "p.parquet.gz", &std::fs::read(parquet).unwrap());

    let error = read_rows(
        &InputFile::new(&path, "p.parquet.gz"),
        &ReadOptions::default(),
    )
    .unwrap_err();

    assert!(
        matches!(error, InputError::GzippedParquet { .. }),
        "{error}"
    );
}

#[test]
fn json_not_array_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let object = write(
        dir.path(),
        "object.json",
        b"{\"url\": \"http://a.example/x.jpg\"}",
    );
    let empty = write(dir.path(), "empty.json", b"");

    for path in [object, empty] {
        let error =
            read_rows(&InputFile::new(&path, "x.json"), &ReadOptions::default()).unwrap_err();

        assert!(matches!(error, InputError::NotJsonArray(_)), "{error}");
        assert!(error.to_string().starts_with("x.json line 1: "), "{error}");
    }
}

#[test]
fn empty_files_no_rows() {
    let dir = tempfile::tempdir().unwrap();
    let names = ["e.jsonl", "e.csv", "e.tsv", "e.txt"];

    for name in names {
        let path = write(dir.path(), name, b"");
        assert!(rows(&path, &ReadOptions::default()).is_empty(), "{name}");
    }
    let path = write(dir.path(), "e.json", b"[]");
    assert!(rows(&path, &ReadOptions::default()).is_empty());
}
