//! `capfilt status`: a run's shards by state, its failures and its throughput, read from the
//! state bucket.

use std::collections::BTreeMap;

use serde::Serialize;

use super::coordinator::Tally;
use super::{check_run_id, now, run_key, NatsArgs, RunInfo, ShardState, STATE_BUCKET};

/// A run's state, printed as text or JSON.
#[derive(Debug, Serialize)]
pub struct RunStatus {
    pub run_id: String,
    pub storage: Option<String>,
    pub shards: usize,
    pub done: u64,
    pub running: u64,
    pub queued: u64,
    pub failed: u64,
    pub rows: Option<u64>,
    pub ok_rows: u64,
    pub images_per_second: f64,
    pub failures: Vec<(String, String)>,
}

/// Reads the run's states. A run the bucket does not know is an error naming the run id.
pub async fn query(nats: &NatsArgs, run_id: &str) -> anyhow::Result<RunStatus> {
    check_run_id(run_id)?;
    let client = nats.connect("capfilt-status", false).await?;
    let context = async_nats::jetstream::new(client);
    let states = context.get_key_value(STATE_BUCKET).await.map_err(|e| {
        anyhow::anyhow!(
            "run {run_id:?} is not known to this NATS server: it has no capfilt state bucket ({e})"
        )
    })?;

    let info: Option<RunInfo> = states
        .get(run_key(run_id))
        .await
        .ok()
        .flatten()
        .and_then(|v| serde_json::from_slice(&v).ok());
    let shards: BTreeMap<String, Option<ShardState>> = super::read_shard_states(&states, run_id)
        .await?
        .into_iter()
        .map(|(id, state)| (id, Some(state)))
        .collect();
    if info.is_none() && shards.is_empty() {
        anyhow::bail!("run {run_id:?} is not known to this NATS server");
    }

    let tally = Tally::of(&shards);
    let elapsed = info
        .as_ref()
        .map(|i| (now() - i.started_at).max(1e-9))
        .unwrap_or(f64::INFINITY);
    let failures = shards
        .iter()
        .filter_map(|(id, state)| match state {
            Some(ShardState::Failed { error, .. }) => Some((id.clone(), error.clone())),
            _ => None,
        })
        .collect();

    Ok(RunStatus {
        run_id: run_id.to_string(),
        storage: info.as_ref().map(|i| i.storage.clone()),
        shards: info
            .as_ref()
            .map_or(shards.len(), |i| i.shards.max(shards.len())),
        done: tally.done,
        running: tally.running,
        queued: tally.queued,
        failed: tally.failed,
        rows: info.as_ref().map(|i| i.rows),
        ok_rows: tally.ok_rows,
        images_per_second: tally.ok_rows as f64 / elapsed,
        failures,
    })
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "run {}", self.run_id)?;
        if let Some(storage) = &self.storage {
            writeln!(f, "  output:    {storage}")?;
        }
        writeln!(f, "  shards:    {}", self.shards)?;
        writeln!(f, "  done:      {}", self.done)?;
        writeln!(f, "  in flight: {}", self.running)?;
        writeln!(f, "  queued:    {}", self.queued)?;
        writeln!(f, "  failed:    {}", self.failed)?;
        writeln!(
            f,
            "  images:    {} captioned, {:.2} images/s since the run started",
            self.ok_rows, self.images_per_second
        )?;
        for (shard, error) in &self.failures {
            writeln!(f, "  failed shard {shard}: {error}")?;
        }
        Ok(())
    }
}
