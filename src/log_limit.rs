//! Rate limiting for log lines that repeat. A dead host in a web-scale list fails thousands of
//! rows with the same error, and one line per row would bury every other message.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::fetch::ImageLocation;
use crate::status::RowStatus;

/// Download failures logged per host and status before the rest are only counted.
const FIRST_FAILURES_LOGGED: u32 = 3;
/// Minimum time between two summaries of a host's suppressed failures.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
/// Keys tracked at once. Past this the table is cleared, which bounds memory on lists with
/// millions of hosts at the cost of logging some repeats again.
const MAX_KEYS: usize = 100_000;

/// Whether to write a log line for an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// One of the first occurrences of its key: log it.
    Log,
    /// Log it with the number of occurrences suppressed since the key's last logged line.
    LogWithSuppressed(u64),
    /// Do not log it.
    Suppress,
}

#[derive(Debug)]
struct Repeats {
    count: u64,
    suppressed: u64,
    last_logged: Instant,
}

/// Lets the first `first` occurrences of each key through, then one line per `interval` that
/// carries the count of the occurrences suppressed meanwhile. The summary is written by the next
/// occurrence after the interval, so a key that stops repeating leaves its last count unlogged.
#[derive(Debug)]
pub struct RepeatLimiter<K> {
    first: u32,
    interval: Duration,
    max_keys: usize,
    seen: HashMap<K, Repeats>,
}

impl<K: Hash + Eq> RepeatLimiter<K> {
    pub fn new(first: u32, interval: Duration, max_keys: usize) -> Self {
        Self {
            first,
            interval,
            max_keys,
            seen: HashMap::new(),
        }
    }

    /// Records an occurrence of `key` at `now` and decides whether it is logged.
    pub fn check(&mut self, key: K, now: Instant) -> Decision {
        if self.seen.len() >= self.max_keys && !self.seen.contains_key(&key) {
            self.seen.clear();
        }
        let repeats = self.seen.entry(key).or_insert(Repeats {
            count: 0,
            suppressed: 0,
            last_logged: now,
        });
        repeats.count += 1;

        if repeats.count <= u64::from(self.first) {
            repeats.last_logged = now;
            return Decision::Log;
        }
        if now.saturating_duration_since(repeats.last_logged) < self.interval {
            repeats.suppressed += 1;
            return Decision::Suppress;
        }

        let suppressed = std::mem::take(&mut repeats.suppressed);
        repeats.last_logged = now;
        Decision::LogWithSuppressed(suppressed)
    }
}

/// Logs failed downloads, limited per host and status.
#[derive(Debug)]
pub struct DownloadFailureLog {
    limiter: Mutex<RepeatLimiter<(String, RowStatus)>>,
}

impl Default for DownloadFailureLog {
    fn default() -> Self {
        Self {
            limiter: Mutex::new(RepeatLimiter::new(
                FIRST_FAILURES_LOGGED,
                SUMMARY_INTERVAL,
                MAX_KEYS,
            )),
        }
    }
}

impl DownloadFailureLog {
    /// Logs a failed download of `location` unless its host has failed this way too often lately.
    pub fn record(&self, location: &ImageLocation, status: RowStatus, message: &str) {
        let host = host_of(location);
        let decision = {
            let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
            limiter.check((host.clone(), status), Instant::now())
        };

        // Messages may quote a URL; its password stays out of the log.
        let message = crate::redact::redact_urls(message);
        match decision {
            Decision::Log => tracing::info!(%host, %status, error = %message, "download failed"),
            Decision::LogWithSuppressed(suppressed) => {
                tracing::info!(%host, %status, error = %message, suppressed, "download failed; {suppressed} more like it since the last line")
            }
            Decision::Suppress => {}
        }
    }
}

fn host_of(location: &ImageLocation) -> String {
    match location {
        ImageLocation::Http(url) => url.host_str().unwrap_or("unknown host").to_string(),
        ImageLocation::File(_) => "local files".to_string(),
        ImageLocation::S3 { bucket, .. } => format!("s3://{bucket}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_lines_pass_then_one_count_per_interval() {
        let mut limiter = RepeatLimiter::new(2, Duration::from_secs(60), 100);
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);

        let first: Vec<Decision> = (0..5)
            .map(|i| limiter.check("dead.example", at(i)))
            .collect();
        let after_interval = limiter.check("dead.example", at(64));
        let right_after = limiter.check("dead.example", at(65));
        let next_interval = limiter.check("dead.example", at(125));

        use Decision::*;
        assert_eq!(first, [Log, Log, Suppress, Suppress, Suppress]);
        assert_eq!(
            after_interval,
            LogWithSuppressed(3),
            "the interval counts from the last logged line"
        );
        assert_eq!(right_after, Suppress);
        assert_eq!(next_interval, LogWithSuppressed(1));
    }

    #[test]
    fn hosts_are_limited_separately() {
        let mut limiter = RepeatLimiter::new(1, Duration::from_secs(60), 100);
        let now = Instant::now();

        assert_eq!(limiter.check(("a", RowStatus::Timeout), now), Decision::Log);
        assert_eq!(
            limiter.check(("a", RowStatus::Timeout), now),
            Decision::Suppress
        );
        assert_eq!(
            limiter.check(("a", RowStatus::HttpError), now),
            Decision::Log,
            "another status of the same host"
        );
        assert_eq!(
            limiter.check(("b", RowStatus::Timeout), now),
            Decision::Log,
            "another host"
        );
    }

    #[test]
    fn full_table_is_cleared_instead_of_growing() {
        let mut limiter = RepeatLimiter::new(1, Duration::from_secs(60), 2);
        let now = Instant::now();

        limiter.check(1, now);
        assert_eq!(limiter.check(1, now), Decision::Suppress);
        limiter.check(2, now);
        limiter.check(3, now);

        assert!(limiter.seen.len() <= 2);
        assert_eq!(
            limiter.check(1, now),
            Decision::Log,
            "key 1 was forgotten when the table filled"
        );
    }
}
