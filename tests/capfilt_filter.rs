//! CapFilt end to end: sampled synthetic captions, ITM scores for web and synthetic captions,
//! keep decisions at the threshold, provenance in the file metadata, and `capfilt export`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::*;

const RUN_TIMEOUT: Duration = Duration::from_secs(300);

fn tiny_filter() -> std::path::PathBuf {
    fixtures().join("models/blip-tiny-itm")
}

/// A JSONL list of the fixture photos by local path, with web captions, one without.
fn write_list(dir: &Path) -> std::path::PathBuf {
    let photos = fixtures().join("photos");
    let rows = [
        ("astronaut.jpg", Some("an astronaut in a white suit")),
        ("chelsea.png", Some("a tabby cat")),
        ("coffee.webp", None),
        ("camera-small.png", Some("")),
    ];
    let text: String = rows
        .iter()
        .map(|(name, caption)| serde_json::json!({"url": photos.join(name), "caption": caption}).to_string() + "\n")
        .collect();
    let path = dir.join("web.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_capfilt_preset(list: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let (model, filter) = (tiny_captioner(), tiny_filter());
    let mut args = vec![
        "run", list.to_str().unwrap(), "--output", out.to_str().unwrap(), "--config", "capfilt",
        "--model", model.to_str().unwrap(), "--filter-model", filter.to_str().unwrap(),
        "--num-captions", "3",
    ];
    args.extend_from_slice(extra);
    run_capfilt(&args, &[], RUN_TIMEOUT)
}

fn split(value: &Option<String>) -> Vec<String> {
    value.as_deref().map(|v| v.split(" | ").map(str::to_string).collect()).unwrap_or_default()
}

#[test]
fn scores_and_keep_flags_follow_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path());
    let out = dir.path().join("out");

    let output = run_capfilt_preset(&list, &out, &["--threshold", "0.5", "--itc", "--batch-size", "2"]);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));

    let rows = read_shards(&out);
    assert_eq!(rows.len(), 4);
    for row in &rows {
        assert_eq!(row["status"].as_deref(), Some("ok"), "{row:?}");
        let captions = split(&row["captions"]);
        let scores: Vec<f32> = split(&row["caption_itm"]).iter().map(|s| s.parse().unwrap()).collect();
        let keeps: Vec<bool> = split(&row["keep_captions"]).iter().map(|s| s.parse().unwrap()).collect();
        let cosines = split(&row["caption_itc"]);
        assert_eq!(captions.len(), 3, "three sampled captions: {row:?}");
        assert_eq!(scores.len(), 3);
        assert_eq!(cosines.len(), 3, "ITC cosines were asked for");
        for (score, keep) in scores.iter().zip(&keeps) {
            assert!((0.0..=1.0).contains(score), "P(match) {score} is a probability");
            assert_eq!(*keep, *score >= 0.5, "keep flag follows the threshold");
        }

        match row["caption"].as_deref().filter(|c| !c.trim().is_empty()) {
            Some(_) => {
                let web: f32 = row["web_itm"].as_deref().unwrap().parse().unwrap();
                assert_eq!(row["keep_web"].as_deref().unwrap() == "true", web >= 0.5);
            }
            None => {
                assert!(row["web_itm"].is_none(), "no or a blank web caption, no web score");
                assert!(row["keep_web"].is_none());
            }
        }
    }

    let metadata = file_metadata(&out);
    assert_eq!(metadata.get("capfilt.filter.threshold").map(String::as_str), Some("0.5"));
    assert_eq!(metadata.get("capfilt.filter.first_token").map(String::as_str), Some("enc"));
    assert!(metadata.get("capfilt.filter.weights_sha256").is_some_and(|h| h.len() == 64));
    assert!(metadata.get("capfilt.captioner.weights_sha256").is_some_and(|h| h.len() == 64));
    assert!(metadata["capfilt.caption.settings"].contains("\"top_p\":0.9"), "{metadata:?}");
}

#[test]
fn same_seed_same_captions() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path());
    let captions = |out: &Path, seed: &str| {
        let output = run_capfilt_preset(&list, out, &["--seed", seed, "--batch-size", if seed == "1" { "4" } else { "1" }]);
        assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
        let mut rows: Vec<_> = read_shards(out).into_iter().map(|r| (r["key"].clone(), r["captions"].clone())).collect();
        rows.sort();
        rows
    };

    let first = captions(&dir.path().join("a"), "1");
    let batch_of_one = captions(&dir.path().join("b"), "1");
    let other_seed = captions(&dir.path().join("c"), "2");

    assert_eq!(first, batch_of_one, "captions do not depend on batch size");
    assert_ne!(first, other_seed, "another seed samples other captions");
}

#[test]
fn export_formats_hold_kept_texts() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path());
    let out = dir.path().join("out");
    let output = run_capfilt_preset(&list, &out, &["--threshold", "0.0"]);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));

    let rows = read_shards(&out);
    let web_kept = rows.iter().filter(|r| r["caption"].as_deref().is_some_and(|c| !c.is_empty())).count();
    let synthetic_kept = rows.iter().map(|r| split(&r["captions"]).len()).sum::<usize>();

    let json_path = dir.path().join("bootstrapped.json");
    let exported = run_capfilt(
        &["export", out.to_str().unwrap(), "--output", json_path.to_str().unwrap()],
        &[],
        RUN_TIMEOUT,
    );
    assert!(exported.status.success(), "stderr:\n{}", String::from_utf8_lossy(&exported.stderr));
    let pairs: Vec<HashMap<String, String>> = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(pairs.len(), web_kept + synthetic_kept, "threshold 0 keeps every non-empty text");
    assert!(pairs.iter().all(|p| p.len() == 2 && p.contains_key("url") && p.contains_key("caption")), "BLIP's release format");
    assert!(pairs.iter().any(|p| p["caption"] == "a tabby cat"));

    let jsonl_path = dir.path().join("pairs.jsonl");
    let exported = run_capfilt(
        &["export", out.to_str().unwrap(), "--output", jsonl_path.to_str().unwrap(), "--format", "jsonl"],
        &[],
        RUN_TIMEOUT,
    );
    assert!(exported.status.success());
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&jsonl_path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), pairs.len());
    assert_eq!(lines.iter().filter(|l| l["source"] == "web").count(), web_kept);

    let none_path = dir.path().join("none.json");
    let strict = run_capfilt_preset(&list, &dir.path().join("strict"), &["--threshold", "1.0"]);
    assert!(strict.status.success());
    let exported = run_capfilt(
        &["export", dir.path().join("strict").to_str().unwrap(), "--output", none_path.to_str().unwrap()],
        &[],
        RUN_TIMEOUT,
    );
    assert!(exported.status.success());
    let none: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&none_path).unwrap()).unwrap();
    let perfect = read_shards(&dir.path().join("strict"))
        .iter()
        .flat_map(|r| split(&r["keep_captions"]).into_iter().chain(r["keep_web"].clone()))
        .filter(|k| k == "true")
        .count();
    assert_eq!(none.len(), perfect, "threshold 1 keeps only texts with P(match) = 1");
}

#[test]
fn export_without_filter_needs_unfiltered() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path());
    let out = dir.path().join("out");
    let output = run_capfilt_preset(&list, &out, &["--no-filter"]);
    assert!(output.status.success(), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(read_shards(&out).iter().all(|r| r["caption_itm"].is_none()));

    let path = dir.path().join("all.json");
    let refused = run_capfilt(&["export", out.to_str().unwrap(), "--output", path.to_str().unwrap()], &[], RUN_TIMEOUT);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--unfiltered"));

    let allowed = run_capfilt(&["export", out.to_str().unwrap(), "--output", path.to_str().unwrap(), "--unfiltered"], &[], RUN_TIMEOUT);
    assert!(allowed.status.success(), "stderr:\n{}", String::from_utf8_lossy(&allowed.stderr));
    let pairs: Vec<serde_json::Value> = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(pairs.len(), 2 + 4 * 3, "two non-empty web captions and three samples for each of four images");
}

#[test]
fn captioner_checkpoint_rejected_as_filter() {
    let dir = tempfile::tempdir().unwrap();
    let list = write_list(dir.path());
    let model = tiny_captioner();
    let out = dir.path().join("out");
    let args = [
        "run", list.to_str().unwrap(), "--output", out.to_str().unwrap(), "--config", "capfilt",
        "--model", model.to_str().unwrap(), "--filter-model", model.to_str().unwrap(),
    ];
    let output = run_capfilt(&args, &[], RUN_TIMEOUT);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("itm_head"), "the error names the missing tensor: {stderr}");
}

