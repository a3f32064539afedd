//! Keeping credentials out of logs, error messages and the manifest. URL lists from the web, and
//! the lists' own URLs, may carry `user:password@` in the authority. Such a URL is shown with the
//! user information replaced by `***`.

/// Text that replaces the user information of a URL.
const MASK: &str = "***";

/// Tells whether `c` ends a URL's authority. Parentheses, commas and apostrophes may appear
/// unencoded in a password, so they do not end it. A URL quoted as `(http://host)` ends at the
/// space after it.
fn ends_authority(c: char) -> bool {
    matches!(c, '/' | '?' | '#' | '\\' | '"' | '<' | '>' | '`') || c.is_whitespace()
}

/// Replaces the user information of every `scheme://user:password@host` in `text` with `***`,
/// so a whole error message (which may quote the URL) can be logged. Text without user
/// information comes back unchanged.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;

    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);

        let authority_len = after.find(ends_authority).unwrap_or(after.len());
        let authority = &after[..authority_len];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[authority_len..];
    }

    out.push_str(rest);
    out
}

/// Formats a parsed URL for display, without its user information.
pub fn redact_url(url: &url::Url) -> String {
    if url.username().is_empty() && url.password().is_none() {
        return url.to_string();
    }
    redact_urls(url.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_information_masked() {
        let cases = [
            ("http://user:secret@127.0.0.1:8080/a.jpg", "http://***@127.0.0.1:8080/a.jpg"),
            ("https://token@host/a?b=c@d", "https://***@host/a?b=c@d"),
            ("http://a:b@c@host/x", "http://***@host/x"),
            ("http://127.0.0.1/a@b.jpg", "http://127.0.0.1/a@b.jpg"),
            ("no URL here", "no URL here"),
            ("", ""),
            (
                "error sending request for url (http://u:p@127.0.0.1:9/x): refused; then https://k:v@h/",
                "error sending request for url (http://***@127.0.0.1:9/x): refused; then https://***@h/",
            ),
            ("http://user:secret@host", "http://***@host"),
            ("s3://bucket/key@1", "s3://bucket/key@1"),
            ("http://u:pa)ss,w;o'rd@host/x", "http://***@host/x"),
            ("redirecting 'http://u:p@h/a' to 'http://h/b'", "redirecting 'http://***@h/a' to 'http://h/b'"),
            ("http://ü:пароль@bücher.test/猫.png", "http://***@bücher.test/猫.png"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_urls(input), expected, "{input}");
        }
    }

    #[test]
    fn parsed_url_masked() {
        let url = url::Url::parse("http://user:secret@127.0.0.1/x.jpg").unwrap();
        assert_eq!(redact_url(&url), "http://***@127.0.0.1/x.jpg");
        let plain = url::Url::parse("http://127.0.0.1/x.jpg").unwrap();
        assert_eq!(redact_url(&plain), "http://127.0.0.1/x.jpg");
    }
}
