//! Per-row outcomes. Every input row yields exactly one output row carrying one of these.

use std::fmt;

/// The stable, machine-readable status of an output row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RowStatus {
    Ok,
    /// The row has no URL (missing, null, empty or whitespace).
    MissingUrl,
    /// The URL has an unsupported scheme or cannot be parsed.
    InvalidUrl,
    /// The input line itself could not be parsed.
    InvalidRow,
    /// The server returned a non-success HTTP status.
    HttpError,
    /// A connect, read or total deadline passed.
    Timeout,
    /// Connection, TLS, DNS or redirect failure.
    NetworkError,
    /// The body (or `Content-Length`) exceeds the byte cap, or the declared pixels exceed the pixel cap.
    TooLarge,
    /// The image is smaller than `min_size` on a side.
    TooSmall,
    /// The bytes are no image format at all (HTML, empty body, ...).
    NotAnImage,
    /// An image format capfilt does not decode (SVG, AVIF, HEIC, ...).
    UnsupportedFormat,
    /// The image format was recognised but its data is corrupt.
    DecodeError,
    /// A local file could not be read.
    FileError,
    /// The URL's scheme is recognised but this build cannot fetch it. Every scheme the reader
    /// accepts (http, https, s3, file) is fetchable today, so no row gets this status.
    UnsupportedUrl,
    /// The destination address is loopback, private, link-local, cloud metadata or another
    /// non-public range, and no `--allow-cidr` or `--allow-private-networks` opens it.
    Blocked,
    /// The server's `X-Robots-Tag` opts the image out of AI use (`noai`, `noimageai`).
    OptedOut,
    /// The server still responded 429, or 503 with `Retry-After`, after the last retry.
    RateLimited,
    /// A redirect loop, or more redirects than `max_redirects`.
    TooManyRedirects,
    /// An earlier run named by `--skip-labelled`, with the same models and settings, already
    /// captioned this URL (or, with `--skip-by content`, these image bytes).
    AlreadyLabelled,
}

impl RowStatus {
    pub const ALL: [RowStatus; 19] = [
        RowStatus::Ok,
        RowStatus::MissingUrl,
        RowStatus::InvalidUrl,
        RowStatus::InvalidRow,
        RowStatus::HttpError,
        RowStatus::Timeout,
        RowStatus::NetworkError,
        RowStatus::TooLarge,
        RowStatus::TooSmall,
        RowStatus::NotAnImage,
        RowStatus::UnsupportedFormat,
        RowStatus::DecodeError,
        RowStatus::FileError,
        RowStatus::UnsupportedUrl,
        RowStatus::Blocked,
        RowStatus::OptedOut,
        RowStatus::RateLimited,
        RowStatus::TooManyRedirects,
        RowStatus::AlreadyLabelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Ok => "ok",
            RowStatus::MissingUrl => "missing_url",
            RowStatus::InvalidUrl => "invalid_url",
            RowStatus::InvalidRow => "invalid_row",
            RowStatus::HttpError => "http_error",
            RowStatus::Timeout => "timeout",
            RowStatus::NetworkError => "network_error",
            RowStatus::TooLarge => "too_large",
            RowStatus::TooSmall => "too_small",
            RowStatus::NotAnImage => "not_an_image",
            RowStatus::UnsupportedFormat => "unsupported_format",
            RowStatus::DecodeError => "decode_error",
            RowStatus::FileError => "file_error",
            RowStatus::UnsupportedUrl => "unsupported_url",
            RowStatus::Blocked => "blocked_address",
            RowStatus::OptedOut => "opted_out",
            RowStatus::RateLimited => "rate_limited",
            RowStatus::TooManyRedirects => "too_many_redirects",
            RowStatus::AlreadyLabelled => "already_labelled",
        }
    }
}

impl fmt::Display for RowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
