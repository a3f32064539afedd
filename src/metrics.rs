//! Prometheus metrics of a capfilt process, served at `/metrics` when `--metrics-addr` is set.
//!
//! Every role shares one registry. `capfilt run` and workers fill the row, batch and download
//! metrics, workers add shard outcomes, and the coordinator adds the queue and run gauges.
//! Metrics a role does not touch stay at zero.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::status::RowStatus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// The process's metrics.
pub struct Metrics {
    pub rows: Family<StatusLabel, Counter>,
    pub images_per_second: Gauge<f64, AtomicU64>,
    pub batch_seconds: Histogram,
    pub batch_size: Histogram,
    pub download_bytes: Counter,
    pub downloads: Counter,
    pub shards: Family<OutcomeLabel, Counter>,
    pub shards_in_flight: Gauge,
    pub run_shards: Family<StateLabel, Gauge>,
    pub queue_pending: Gauge,
    pub queue_ack_pending: Gauge,
    pub queue_redelivered: Gauge,
    pub gpu_memory_used_bytes: Gauge,
    registry: Registry,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Returns the process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut metrics = Metrics {
            rows: Family::default(),
            images_per_second: Gauge::default(),
            // 10 ms to about 330 s: a tiny model on CPU up to BLIP-large beam search on CPU.
            batch_seconds: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            download_bytes: Counter::default(),
            downloads: Counter::default(),
            shards: Family::default(),
            shards_in_flight: Gauge::default(),
            run_shards: Family::default(),
            queue_pending: Gauge::default(),
            queue_ack_pending: Gauge::default(),
            queue_redelivered: Gauge::default(),
            gpu_memory_used_bytes: Gauge::default(),
            registry: Registry::with_prefix("capfilt"),
        };
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let registry = &mut self.registry;
        registry.register("rows", "Output rows by status", self.rows.clone());
        registry.register(
            "images_per_second",
            "Rows captioned per second since the process started",
            self.images_per_second.clone(),
        );
        registry.register(
            "batch_seconds",
            "Time to caption and score one model batch",
            self.batch_seconds.clone(),
        );
        registry.register(
            "batch_size",
            "Images per model batch",
            self.batch_size.clone(),
        );
        registry.register(
            "download_bytes",
            "Image bytes downloaded",
            self.download_bytes.clone(),
        );
        registry.register(
            "downloads",
            "Images downloaded, one per distinct URL in flight",
            self.downloads.clone(),
        );
        registry.register(
            "worker_shards",
            "Shard jobs a worker settled, by outcome",
            self.shards.clone(),
        );
        registry.register(
            "worker_shards_in_flight",
            "Shard jobs a worker holds",
            self.shards_in_flight.clone(),
        );
        registry.register(
            "run_shards",
            "Shards of the coordinator's run by state",
            self.run_shards.clone(),
        );
        registry.register(
            "queue_pending",
            "Jobs waiting in the worker consumer",
            self.queue_pending.clone(),
        );
        registry.register(
            "queue_ack_pending",
            "Jobs delivered to workers and not yet acknowledged",
            self.queue_ack_pending.clone(),
        );
        registry.register(
            "queue_redelivered",
            "Jobs delivered more than once and not yet acknowledged",
            self.queue_redelivered.clone(),
        );
        registry.register(
            "gpu_memory_used_bytes",
            "Device memory in use on the GPU, from nvidia-smi",
            self.gpu_memory_used_bytes.clone(),
        );
    }

    pub fn record_row(&self, status: RowStatus) {
        self.rows
            .get_or_create(&StatusLabel {
                status: status.as_str().to_string(),
            })
            .inc();
    }

    pub fn record_batch(&self, images: usize, elapsed: Duration) {
        self.batch_size.observe(images as f64);
        self.batch_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn record_download(&self, bytes: usize) {
        self.downloads.inc();
        self.download_bytes.inc_by(bytes as u64);
    }

    pub fn record_shard(&self, outcome: &str) {
        self.shards
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn set_run_shards(&self, state: &str, count: u64) {
        self.run_shards
            .get_or_create(&StateLabel {
                state: state.to_string(),
            })
            .set(count as i64);
    }

    /// Renders the registry in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Serves `/metrics` on `addr` until the process exits. Binding happens before this returns,
/// so a port that is taken fails the command at start.
pub async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to listen on {addr} for metrics"))?;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                metrics().encode(),
            )
        }),
    );
    tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "metrics server stopped");
        }
    });
    Ok(())
}

/// Polls `nvidia-smi` for the memory in use on `device` (`cuda` or `cuda:N`) every 15 seconds.
/// Without `nvidia-smi` the gauge stays at zero and one warning is logged.
pub fn watch_gpu_memory(device: &str) {
    let Some(ordinal) = cuda_ordinal(device) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            match query_gpu_memory(ordinal).await {
                Ok(bytes) => {
                    metrics().gpu_memory_used_bytes.set(bytes as i64);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read GPU memory; capfilt_gpu_memory_used_bytes stays at 0");
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(15)).await;
        }
    });
}

fn cuda_ordinal(device: &str) -> Option<u32> {
    match device.trim() {
        "cuda" => Some(0),
        other => other.strip_prefix("cuda:")?.parse().ok(),
    }
}

async fn query_gpu_memory(ordinal: u32) -> anyhow::Result<u64> {
    let output = tokio::process::Command::new("nvidia-smi")
        .args([
            "--query-gpu=memory.used",
            "--format=csv,noheader,nounits",
            &format!("--id={ordinal}"),
        ])
        .output()
        .await
        .context("failed to run nvidia-smi")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mebibytes: u64 = text
        .trim()
        .parse()
        .with_context(|| format!("unexpected nvidia-smi output {text:?}"))?;
    Ok(mebibytes * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_recorded_values() {
        let metrics = Metrics::new();
        metrics.record_row(RowStatus::Ok);
        metrics.record_row(RowStatus::Ok);
        metrics.record_row(RowStatus::HttpError);
        metrics.record_batch(8, Duration::from_millis(250));
        metrics.record_download(1000);

        let text = metrics.encode();
        assert!(
            text.contains("capfilt_rows_total{status=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("capfilt_rows_total{status=\"http_error\"} 1"),
            "{text}"
        );
        assert!(text.contains("capfilt_batch_size_count 1"), "{text}");
        assert!(text.contains("capfilt_download_bytes_total 1000"), "{text}");
    }

    #[test]
    fn cuda_ordinals_parse() {
        assert_eq!(cuda_ordinal("cuda"), Some(0));
        assert_eq!(cuda_ordinal("cuda:3"), Some(3));
        assert_eq!(cuda_ordinal("cpu"), None);
    }
}
