//! Broken rows are marked and skipped over; broken files fail loudly.

mod common;

use capfilt_coordinator::{read_rows, InputError, InputFile, ReadOptions, RowProblem};
use common::*;

#[test]
fn jsonl_broken_lines_marked() {
    let text = "{\"url\": \"http://a.example/1.jpg\"}\n\
                {\"url\": \"http://a.example/2.jpg\"}\n\
                {\"url\": }\n\
                [\"not\", \"an object\"]\n\
                \n\
                {\"url\": \"http://a.example/5.jpg\"}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "urls.jsonl", text.as_bytes());

    let rows = rows_labelled(&path, "urls.jsonl", &ReadOptions::default());

    assert_eq!(rows.len(), 5);
    assert_eq!(
        malformed_message(&rows[2]),
        "urls.jsonl line 3: expected value at column 9"
    );
    assert_eq!(
        malformed_message(&rows[3]),
        "urls.jsonl line 4: expected a JSON object, found an array"
    );
    assert_eq!((rows[4].row_index, rows[4].line), (4, Some(6)));
    assert_eq!(rows[4].url.as_deref(), Some("http://a.example/5.jpg"));
    assert!(rows[4].problem.is_none());
    assert_eq!(
        rows[3].key,
        format!("{}:3", capfilt_coordinator::input_tag("urls.jsonl"))
    );
}

#[test]
fn csv_broken_records_marked() {
    let text = "url,caption\n\
                http://a.example/1.jpg,one\n\
                http://a.example/2.jpg\n\
                http://a.example/3.jpg,three,extra\n\
                http://a.example/4.jpg,\"never closed\n\
                http://a.example/5.jpg,five\n";
    let dir = tempfile::tempdir().unwrap();
    let plain = write(dir.path(), "urls.csv", text.as_bytes());
    let gzipped = write_gz(dir.path(), "urls.csv.gz", text.as_bytes());

    for path in [plain, gzipped] {
        let rows = rows_labelled(&path, "urls.csv", &ReadOptions::default());

        assert_eq!(rows.len(), 5);
        assert!(rows[0].problem.is_none());
        assert_eq!(
            malformed_message(&rows[1]),
            "urls.csv line 3: expected 2 fields, found 1"
        );
        assert_eq!(
            malformed_message(&rows[2]),
            "urls.csv line 4: expected 2 fields, found 3"
        );
        assert_eq!(
            malformed_message(&rows[3]),
            "urls.csv line 5: quoted field is never closed"
        );
        assert_eq!(
            urls_and_captions(&rows)[4],
            (Some("http://a.example/5.jpg"), Some("five"))
        );
        assert_eq!(rows[4].line, Some(6));
    }
}

#[test]
fn headerless_width_from_first_record() {
    // A tab inside a caption shifts the URL; the row must not pass for one
    // whose URL is a caption fragment.
    let text = "cap one\thttp://a.example/1.jpg\ncap\ttwo\thttp://a.example/2.jpg\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "cc.tsv", text.as_bytes());

    let rows = rows(
        &path,
        &ReadOptions {
            header: false,
            ..ReadOptions::default()
        },
    );

    assert!(rows[0].problem.is_none());
    assert!(malformed_message(&rows[1]).ends_with("line 2: expected 2 fields, found 3"));
}

#[test]
fn invalid_utf8_marks_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let text = write(
        dir.path(),
        "u.txt",
        b"http://a.example/1.jpg\nhttp://a.example/\xff.jpg\nhttp://a.example/3.jpg\n",
    );
    let csv = write(
        dir.path(),
        "u.csv",
        b"url,caption\nhttp://a.example/1.jpg,\xfe\nhttp://a.example/2.jpg,ok\n",
    );

    let text_rows = rows_labelled(&text, "u.txt", &ReadOptions::default());
    let csv_rows = rows_labelled(&csv, "u.csv", &ReadOptions::default());

    assert_eq!(text_rows.len(), 3);
    assert_eq!(
        malformed_message(&text_rows[1]),
        "u.txt line 2: not valid UTF-8"
    );
    assert_eq!(
        malformed_message(&csv_rows[0]),
        "u.csv line 2: field 2 is not valid UTF-8"
    );
    assert!(csv_rows[1].problem.is_none());
}

#[test]
fn json_array_syntax_error_stops() {
    let text = "[\n{\"url\": \"http://a.example/1.jpg\"},\n\"just a string\",\n{\"url\": \"http://a.example/3.jpg\" \"caption\": 1},\n{\"url\": \"http://a.example/4.jpg\"}\n]";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "a.json", text.as_bytes());

    let rows = rows_labelled(&path, "a.json", &ReadOptions::default());

    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert!(rows[0].problem.is_none());
    assert_eq!(
        malformed_message(&rows[1]),
        "a.json line 3: array element is a string, not an object"
    );
    assert_eq!(
        malformed_message(&rows[2]),
        "a.json line 4: expected `,` or `}` at column 34"
    );
    assert_eq!(rows[2].line, Some(4));
}

#[test]
fn json_array_trailing_text() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "t.json",
        b"[{\"url\": \"http://a.example/1.jpg\"}]\n]",
    );

    let rows = rows(&path, &ReadOptions::default());

    assert_eq!(rows.len(), 2);
    assert!(
        malformed_message(&rows[1]).contains("trailing characters"),
        "{:?}",
        rows[1]
    );
}

#[test]
fn url_problems_keep_text() {
    let text = "{\"url\": \"  http://a.example/1.jpg \"}\n\
                {\"url\": \"\"}\n\
                {\"url\": null}\n\
                {\"caption\": \"no url key\", \"other\": 1}\n\
                {\"url\": \"javascript:alert(1)\"}\n\
                {\"url\": 42}\n";
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "p.jsonl", text.as_bytes());

    let rows = rows(&path, &ReadOptions::default());

    let got: Vec<_> = rows
        .iter()
        .map(|r| (r.url.as_deref(), r.problem.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some("http://a.example/1.jpg"), None),
            (None, Some(RowProblem::MissingUrl)),
            (None, Some(RowProblem::MissingUrl)),
            (None, Some(RowProblem::MissingUrl)),
            (
                Some("javascript:alert(1)"),
                Some(RowProblem::InvalidUrl(
                    "unsupported scheme `javascript`".into()
                ))
            ),
            (
                Some("42"),
                Some(RowProblem::InvalidUrl(
                    "expected a string, found `42`".into()
                ))
            ),
        ]
    );
}

#[test]
fn gzip_truncated_fails() {
    let mut text = String::new();
    for i in 0..20_000 {
        text.push_str(&format!(
            "{{\"url\": \"http://a.example/{i}.jpg\", \"caption\": \"caption number {i}\"}}\n"
        ));
    }
    let compressed = gzip(text.as_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "cut.jsonl.gz",
        &compressed[..compressed.len() / 2],
    );

    let mut reader = read_rows(
        &InputFile::new(&path, "cut.jsonl.gz"),
        &ReadOptions::default(),
    )
    .unwrap();
    let read = reader.by_ref().count();
    let failure = reader.take_failure();

    assert!(read > 0, "read no rows");
    assert!(read < 20_000, "read all {read} rows");
    let Some(InputError::Io { place, .. }) = &failure else {
        panic!("no read failure: {failure:?}");
    };
    assert!(place.starts_with("cut.jsonl.gz line "), "{place}");
}
