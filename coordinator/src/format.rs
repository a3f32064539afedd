//! The input formats and their detection from file names.

use std::fmt;
use std::str::FromStr;

use crate::error::InputError;

/// The layout of a URL list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InputFormat {
    /// One JSON array of objects, as in BLIP's released bootstrapped data.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// Comma-separated values.
    Csv,
    /// Tab-separated values, as in Conceptual Captions.
    Tsv,
    /// One URL per line, with `#` comments.
    Text,
    /// Apache Parquet, as in the LAION metadata.
    Parquet,
}

impl InputFormat {
    /// Returns the format a file name implies, looking past a `.gz` suffix.
    ///
    /// The name may also be a URL: its query and fragment are ignored, so
    /// `https://host/part-0.jsonl.gz?sig=abc` is JSON Lines.
    pub fn from_file_name(name: &str) -> Option<InputFormat> {
        let name = strip_query(name);
        let name = name.rsplit(['/', '\\']).next().unwrap_or(name);
        let name = name.to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);

        let (_, extension) = name.rsplit_once('.')?;
        match extension {
            "json" => Some(InputFormat::Json),
            "jsonl" | "ndjson" => Some(InputFormat::Jsonl),
            "csv" => Some(InputFormat::Csv),
            "tsv" => Some(InputFormat::Tsv),
            "txt" | "lst" | "list" => Some(InputFormat::Text),
            "parquet" => Some(InputFormat::Parquet),
            _ => None,
        }
    }

    /// Checks whether directory scans pick up a file of this name.
    ///
    /// Gzipped Parquet is left out because [`crate::read_rows`] refuses it.
    pub(crate) fn is_listed_name(name: &str) -> bool {
        let gzipped = name.to_ascii_lowercase().ends_with(".gz");
        match InputFormat::from_file_name(name) {
            Some(InputFormat::Parquet) => !gzipped,
            Some(_) => true,
            None => false,
        }
    }
}

/// Returns the part of a name before `?` or `#`, which in a URL carry no
/// file type.
fn strip_query(name: &str) -> &str {
    let end = name.find(['?', '#']).unwrap_or(name.len());
    &name[..end]
}

impl FromStr for InputFormat {
    type Err = InputError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(InputFormat::Json),
            "jsonl" | "ndjson" => Ok(InputFormat::Jsonl),
            "csv" => Ok(InputFormat::Csv),
            "tsv" => Ok(InputFormat::Tsv),
            "txt" | "text" => Ok(InputFormat::Text),
            "parquet" => Ok(InputFormat::Parquet),
            _ => Err(InputError::UnknownFormatName(s.to_string())),
        }
    }
}

impl fmt::Display for InputFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            InputFormat::Json => "json",
            InputFormat::Jsonl => "jsonl",
            InputFormat::Csv => "csv",
            InputFormat::Tsv => "tsv",
            InputFormat::Text => "txt",
            InputFormat::Parquet => "parquet",
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_formats() {
        let cases = [
            ("a.json", Some(InputFormat::Json)),
            ("a.JSON.gz", Some(InputFormat::Json)),
            ("a.ndjson", Some(InputFormat::Jsonl)),
            ("dir.v2/a.jsonl.gz", Some(InputFormat::Jsonl)),
            ("a.csv", Some(InputFormat::Csv)),
            ("cc3m.tsv.gz", Some(InputFormat::Tsv)),
            ("urls.lst", Some(InputFormat::Text)),
            ("urls.list", Some(InputFormat::Text)),
            ("urls.txt", Some(InputFormat::Text)),
            ("laion.parquet", Some(InputFormat::Parquet)),
            (
                "https://h/x/part.jsonl.gz?sig=a.csv",
                Some(InputFormat::Jsonl),
            ),
            ("a.gz", None),
            ("README", None),
            ("a.parquet.bak", None),
        ];

        for (name, want) in cases {
            assert_eq!(InputFormat::from_file_name(name), want, "{name}");
        }
    }

    #[test]
    fn format_names_round_trip() {
        let all = [
            InputFormat::Json,
            InputFormat::Jsonl,
            InputFormat::Csv,
            InputFormat::Tsv,
            InputFormat::Text,
            InputFormat::Parquet,
        ];

        for format in all {
            assert_eq!(format.to_string().parse::<InputFormat>().unwrap(), format);
        }
        assert_eq!("text".parse::<InputFormat>().unwrap(), InputFormat::Text);
        assert_eq!(
            " JSONL ".parse::<InputFormat>().unwrap(),
            InputFormat::Jsonl
        );
        assert!(matches!(
            "xml".parse::<InputFormat>(),
            Err(InputError::UnknownFormatName(name)) if name == "xml"
        ));
    }

    #[test]
    fn gzipped_parquet_is_not_listed() {
        assert!(InputFormat::is_listed_name("a.csv.gz"));
        assert!(InputFormat::is_listed_name("a.parquet"));
        assert!(!InputFormat::is_listed_name("a.parquet.gz"));
        assert!(!InputFormat::is_listed_name("notes.md"));
    }
}
