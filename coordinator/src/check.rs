//! Deciding whether a URL field can be fetched at all.
//!
//! Only the shape is checked here: reachability is the downloader's
//! concern. The string is never rewritten, because the URL is
//! part of the output and users join on it.

use crate::error::RowProblem;

/// Words that data exporters write for a missing value (pandas, Python's
/// `str(None)`, SQL dumps); as URLs they would pass for local file names.
const NULL_MARKERS: [&str; 3] = ["null", "none", "nan"];

/// Schemes the downloader can fetch.
const FETCHABLE: [&str; 4] = ["http", "https", "s3", "file"];

/// Maximum scheme length quoted in a message, so that a data: URL or garbage
/// does not end up whole in the logs.
const MAX_QUOTED_SCHEME: usize = 32;

/// Checks one URL field, trimmed of surrounding whitespace.
///
/// Accepted: `http`/`https` URLs with a host, `s3://bucket/...`, `file:`
/// URLs, and strings without a scheme, which name local files. Empty text
/// and null markers are [`RowProblem::MissingUrl`]; any other scheme is
/// [`RowProblem::InvalidUrl`] naming it.
pub fn check_url(s: &str) -> Result<(), RowProblem> {
    let s = s.trim();
    if is_missing(s) {
        return Err(RowProblem::MissingUrl);
    }

    let Some(scheme) = scheme_of(s) else {
        return Ok(());
    };

    let scheme = scheme.to_ascii_lowercase();
    if !FETCHABLE.contains(&scheme.as_str()) {
        return Err(RowProblem::InvalidUrl(format!(
            "unsupported scheme `{}`",
            shorten(&scheme)
        )));
    }

    check_parsed(s, &scheme)
}

fn is_missing(s: &str) -> bool {
    s.is_empty() || NULL_MARKERS.iter().any(|m| s.eq_ignore_ascii_case(m))
}

/// Returns the scheme of `s`, or `None` when `s` reads as a local path.
///
/// RFC 3986 spells a scheme as a letter followed by letters, digits, `+`,
/// `-` or `.`. One letter alone is taken as a Windows drive (`C:\x.jpg`),
/// not as a scheme.
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once(':')?;

    let mut chars = scheme.chars();
    let first = chars.next()?;
    let well_formed = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));

    (well_formed && scheme.len() > 1).then_some(scheme)
}

/// Parses a URL of a fetchable scheme and checks that it names a server or
/// bucket where one is needed.
fn check_parsed(s: &str, scheme: &str) -> Result<(), RowProblem> {
    let parsed = url::Url::parse(s)
        .map_err(|e| RowProblem::InvalidUrl(format!("cannot parse {scheme} URL: {e}")))?;

    let host = parsed.host_str().unwrap_or("");
    match scheme {
        "http" | "https" if host.is_empty() => {
            Err(RowProblem::InvalidUrl(format!("{scheme} URL has no host")))
        }
        "s3" if host.is_empty() => Err(RowProblem::InvalidUrl("s3 URL has no bucket".into())),
        _ => Ok(()),
    }
}

fn shorten(s: &str) -> String {
    if s.len() <= MAX_QUOTED_SCHEME {
        return s.to_string();
    }
    format!("{}...", &s[..MAX_QUOTED_SCHEME])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Ok(())` for accepted URLs, else the expected problem.
    fn invalid(reason: &str) -> Result<(), RowProblem> {
        Err(RowProblem::InvalidUrl(reason.to_string()))
    }

    #[test]
    fn url_table() {
        let cases: Vec<(&str, Result<(), RowProblem>)> = vec![
            ("http://example.com/a.jpg", Ok(())),
            ("  https://example.com/a b.jpg?x=1&amp;y=2\t", Ok(())),
            ("HTTPS://EXAMPLE.COM/A.JPG", Ok(())),
            ("s3://bucket/key/a.jpg", Ok(())),
            ("file:///data/a.jpg", Ok(())),
            ("images/a.jpg", Ok(())),
            ("/abs/path/a:b.jpg", Ok(())),
            ("C:\\images\\a.jpg", Ok(())),
            ("", Err(RowProblem::MissingUrl)),
            (" \t ", Err(RowProblem::MissingUrl)),
            ("null", Err(RowProblem::MissingUrl)),
            ("None", Err(RowProblem::MissingUrl)),
            ("NaN", Err(RowProblem::MissingUrl)),
            (
                "ftp://example.com/a.jpg",
                invalid("unsupported scheme `ftp`"),
            ),
            (
                "data:image/png;base64,iVBORw0",
                invalid("unsupported scheme `data`"),
            ),
            (
                "javascript:alert(1)",
                invalid("unsupported scheme `javascript`"),
            ),
            (
                "mailto:someone@example.com",
                invalid("unsupported scheme `mailto`"),
            ),
            ("http://", invalid("cannot parse http URL: empty host")),
            ("https:///", invalid("cannot parse https URL: empty host")),
            ("s3:///key", invalid("s3 URL has no bucket")),
            ("s3://", invalid("s3 URL has no bucket")),
        ];

        for (input, want) in cases {
            assert_eq!(check_url(input), want, "{input:?}");
        }
    }

    #[test]
    fn long_schemes_are_cut_in_messages() {
        let scheme = "x".repeat(100);
        let Err(RowProblem::InvalidUrl(reason)) = check_url(&format!("{scheme}:rest")) else {
            panic!("a 100-letter scheme was accepted");
        };

        assert!(reason.len() < 60, "{reason}");
        assert!(reason.contains("xxxx..."), "{reason}");
    }
}
