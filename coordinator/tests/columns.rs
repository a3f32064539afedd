//! Column options: kept columns, key columns, and errors for columns that
//! do not exist.

mod common;

use capfilt_coordinator::{input_tag, read_rows, InputError, InputFile, ReadOptions, RowProblem};
use common::*;

fn open_error(path: &std::path::Path, label: &str, opts: &ReadOptions) -> InputError {
    read_rows(&InputFile::new(path, label), opts).unwrap_err()
}

#[test]
fn kept_json_values_as_strings() {
    let text = "{\"url\": \"http://a.example/1.jpg\", \"s\": \"str\", \"n\": 3, \"o\": {\"a\": [1, true]}, \"z\": null}\n\
                {\"url\": \"http://a.example/2.jpg\", \"n\": 2.5}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "k.jsonl", text.as_bytes());
    let opts = ReadOptions {
        keep_cols: vec!["s".into(), "n".into(), "o".into(), "z".into(), "url".into()],
        ..ReadOptions::default()
    };

    let rows = rows(&path, &opts);

    let url = |i: u32| Some(format!("http://a.example/{i}.jpg"));
    let some = |s: &str| Some(s.to_string());
    assert_eq!(
        rows[0].kept,
        vec![
            some("str"),
            some("3"),
            some("{\"a\":[1,true]}"),
            None,
            url(1)
        ]
    );
    assert_eq!(rows[1].kept, vec![None, some("2.5"), None, None, url(2)]);
    assert_eq!(
        rows[0].url,
        url(1),
        "keeping the URL column must not take it away"
    );
}

#[test]
fn kept_csv_columns_in_order() {
    let text = "a,url,b,c\n1,http://a.example/1.jpg,2,3\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "k.csv", text.as_bytes());
    let opts = ReadOptions {
        keep_cols: vec!["c".into(), "a".into()],
        ..ReadOptions::default()
    };

    let rows = rows(&path, &opts);

    assert_eq!(
        rows[0].kept,
        vec![Some("3".to_string()), Some("1".to_string())]
    );
    assert_eq!(rows[0].caption, None, "no caption column, no caption");
}

#[test]
fn key_column_json_values() {
    let text = "{\"id\": \"img-a\", \"url\": \"http://a.example/1.jpg\"}\n\
                {\"id\": 17, \"url\": \"http://a.example/2.jpg\"}\n\
                {\"url\": \"http://a.example/3.jpg\"}\n\
                {\"id\": \"  \", \"url\": \"ftp://a.example/4.jpg\"}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "k.jsonl", text.as_bytes());
    let opts = ReadOptions {
        key_col: Some("id".into()),
        ..ReadOptions::default()
    };

    let rows = rows_labelled(&path, "k.jsonl", &opts);

    let tag = input_tag("k.jsonl");
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "img-a".to_string(),
            "17".into(),
            format!("{tag}:2"),
            format!("{tag}:3")
        ]
    );
    assert_eq!(rows[0].problem, None);
    assert_eq!(
        malformed_message(&rows[2]),
        "k.jsonl line 3: key column `id` is empty"
    );
    // A row without its key reports that before its bad URL.
    assert_eq!(
        malformed_message(&rows[3]),
        "k.jsonl line 4: key column `id` is empty"
    );
    assert_eq!(rows[2].url.as_deref(), Some("http://a.example/3.jpg"));
}

#[test]
fn key_column_csv_and_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "k.csv",
        b"key,url\nx1,http://a.example/1.jpg\n,http://a.example/2.jpg\n",
    );
    let parquet = write_laion_parquet(dir.path(), "k.parquet", 3, 3);

    let csv_rows = rows(
        &csv,
        &ReadOptions {
            key_col: Some("key".into()),
            ..ReadOptions::default()
        },
    );
    let parquet_rows = rows(
        &parquet,
        &ReadOptions {
            key_col: Some("SAMPLE_ID".into()),
            ..ReadOptions::default()
        },
    );

    assert_eq!(csv_rows[0].key, "x1");
    assert!(is_malformed(&csv_rows[1]));
    let keys: Vec<&str> = parquet_rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, vec!["1000", "1001", "1002"]);
}

#[test]
fn explicit_url_and_caption_columns() {
    let text = "{\"url\": \"http://wrong.example/x.jpg\", \"image\": \"http://a.example/1.jpg\", \"alt\": \"alt text\", \"caption\": \"no\"}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "e.jsonl", text.as_bytes());

    let rows = rows(&path, &options(Some("image"), Some("alt")));

    assert_eq!(
        urls_and_captions(&rows),
        vec![(Some("http://a.example/1.jpg"), Some("alt text"))]
    );
}

#[test]
fn missing_named_column_lists_available() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "m.csv",
        b"url,caption,width\nhttp://a.example/1.jpg,x,3\n",
    );

    let cases = [
        (options(Some("URL"), None), "URL", "URL"),
        (options(None, Some("alt")), "caption", "alt"),
        (
            ReadOptions {
                key_col: Some("id".into()),
                ..ReadOptions::default()
            },
            "key",
            "id",
        ),
        (
            ReadOptions {
                keep_cols: vec!["height".into()],
                ..ReadOptions::default()
            },
            "kept",
            "height",
        ),
    ];

    for (opts, want_role, want_name) in cases {
        let error = open_error(&path, "m.csv", &opts);

        let InputError::MissingColumn {
            role,
            name,
            available,
            ..
        } = &error
        else {
            panic!("wrong error: {error}");
        };
        assert_eq!((*role, name.as_str()), (want_role, want_name));
        assert_eq!(available, "url, caption, width");
        assert!(error.to_string().starts_with("m.csv: no "), "{error}");
    }
}

#[test]
fn url_column_default_missing() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "n.csv",
        b"link,caption\nhttp://a.example/1.jpg,x\n",
    );
    let jsonl = write(
        dir.path(),
        "n.jsonl",
        b"{\"link\": \"http://a.example/1.jpg\"}\n",
    );

    for path in [csv, jsonl] {
        let error = open_error(&path, "n", &ReadOptions::default());

        assert!(
            matches!(&error, InputError::NoUrlColumn { available, .. } if available.contains("link")),
            "{error}"
        );
    }
}

#[test]
fn json_first_object_as_header() {
    let dir = tempfile::tempdir().unwrap();
    // The first line is broken, so the second object is the one checked.
    let jsonl = write(
        dir.path(),
        "f.jsonl",
        b"{oops\n{\"url\": \"http://a.example/1.jpg\", \"cap\": \"x\"}\n",
    );
    let json = write(
        dir.path(),
        "f.json",
        b"[{\"url\": \"http://a.example/1.jpg\", \"cap\": \"x\"}]",
    );

    for path in [jsonl, json] {
        let error = open_error(&path, "f", &options(None, Some("caption_text")));

        assert!(
            matches!(&error, InputError::MissingColumn { name, available, .. } if name == "caption_text" && available.contains("cap")),
            "{error}"
        );
    }
}

#[test]
fn json_later_objects_sparse() {
    let text = "{\"url\": \"http://a.example/1.jpg\", \"alt\": \"x\"}\n{\"url\": \"http://a.example/2.jpg\"}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "s.jsonl", text.as_bytes());

    let rows = rows(&path, &options(None, Some("alt")));

    assert_eq!(
        urls_and_captions(&rows)[1],
        (Some("http://a.example/2.jpg"), None)
    );
    assert_eq!(rows[1].problem, None);
}

#[test]
fn parquet_columns_checked_in_schema() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_laion_parquet(dir.path(), "l.parquet", 4, 4);

    let missing = open_error(
        &path,
        "l.parquet",
        &ReadOptions {
            keep_cols: vec!["HEIGHT".into()],
            ..ReadOptions::default()
        },
    );
    let wrong_type = open_error(&path, "l.parquet", &options(Some("WIDTH"), None));

    assert!(
        matches!(&missing, InputError::MissingColumn { available, .. } if available == "SAMPLE_ID, URL, TEXT, WIDTH"),
        "{missing}"
    );
    assert!(
        matches!(&wrong_type, InputError::UrlColumnType { data_type, .. } if data_type == "Int64"),
        "{wrong_type}"
    );
}

#[test]
fn headerless_name_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "h.tsv", b"cap\thttp://a.example/1.jpg\n");
    let opts = ReadOptions {
        header: false,
        url_col: Some("url".into()),
        ..ReadOptions::default()
    };

    let error = open_error(&path, "h.tsv", &opts);

    assert!(
        matches!(&error, InputError::ColumnNotIndex { role: "URL", name, .. } if name == "url"),
        "{error}"
    );
}

#[test]
fn text_list_columns_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "t.txt", b"http://a.example/1.jpg\n");
    let opts = ReadOptions {
        keep_cols: vec!["width".into()],
        ..ReadOptions::default()
    };

    let error = open_error(&path, "t.txt", &opts);

    assert!(
        matches!(&error, InputError::NoColumnsInText { role: "kept", .. }),
        "{error}"
    );
}

#[test]
fn problem_located_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "p.txt",
        b"http://a.example/1.jpg\nmailto:x@example.com\n",
    );

    let rows = rows_labelled(&path, "p.txt", &ReadOptions::default());

    let problem = rows[1].problem.as_ref().unwrap();
    assert_eq!(
        *problem,
        RowProblem::InvalidUrl("unsupported scheme `mailto`".into())
    );
    assert_eq!(
        problem.located("p.txt", rows[1].line, rows[1].row_index),
        "p.txt line 2: invalid URL: unsupported scheme `mailto`"
    );
}
