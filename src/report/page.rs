//! The report's HTML. Every text from the data (captions, URLs, keys, errors, manifest values)
//! goes through `escape`, because captions are scraped from the web and may hold markup. The
//! page also carries a Content-Security-Policy that forbids scripts, so markup that slipped
//! through could not run.

use std::fmt::Write;

use super::chart;
use super::{RunStats, Sample, SyntheticCaption};

/// Largest side of a gallery thumbnail, in CSS pixels.
const THUMBNAIL: u32 = 200;
/// Failure reasons listed, most frequent first.
const TOP_REASONS: usize = 25;

/// Policy that blocks scripts, frames, fonts and style sheets from elsewhere. Images may come from
/// any web or file URL, because the gallery shows the dataset's own image URLs.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; img-src http: https: file: data:; style-src 'unsafe-inline'";

const STYLE: &str = "
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
td.count { text-align: right; font-variant-numeric: tabular-nums; }
.warning { background: #fff3cd; border: 1px solid #e0c36c; padding: 6px 10px; margin: 6px 0; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
.charts figure { margin: 0; }
.chart .tick { font-size: 10px; fill: #444; } .chart .axis { font-size: 11px; fill: #222; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 12px; }
.card { border: 1px solid #ddd; padding: 8px; overflow-wrap: anywhere; }
.thumb { width: 200px; height: 200px; display: flex; align-items: center; justify-content: center; background: #f4f4f4; }
.card ul { padding-left: 18px; margin: 4px 0; }
.kept { color: #1e7b34; font-weight: 600; } .dropped { color: #b02a37; font-weight: 600; }
.key, .url { font-size: 11px; color: #666; }
";

/// Renders the whole page.
pub fn render(stats: &RunStats) -> String {
    let mut html = String::new();

    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CONTENT_SECURITY_POLICY}\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>capfilt report: {dir}</title><style>{STYLE}</style></head><body>",
        dir = escape(&stats.dir.display().to_string())
    );
    let _ = write!(
        html,
        "<h1>capfilt report</h1><p>Output folder <code>{}</code>: ",
        escape(&stats.dir.display().to_string())
    );
    let _ = write!(
        html,
        "<span id=\"total-rows\">{}</span> rows in {} shard files.</p>",
        stats.rows,
        stats.shard_files.len()
    );
    for warning in &stats.warnings {
        let _ = write!(html, "<p class=\"warning\">{}</p>", escape(warning));
    }

    write_run(&mut html, stats);
    write_statuses(&mut html, stats);
    write_reasons(&mut html, stats);
    write_scores(&mut html, stats);
    write_lengths(&mut html, stats);
    write_gallery(&mut html, &stats.samples);

    html.push_str("</body></html>\n");
    html
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.0%".into();
    }
    format!("{:.1}%", part as f64 * 100.0 / whole as f64)
}

fn write_run(html: &mut String, stats: &RunStats) {
    let Some(manifest) = &stats.manifest else {
        html.push_str("<h2>Run</h2><p>No _manifest.json in the folder; the figures below come from the shard files alone.</p>");
        return;
    };

    html.push_str("<h2>Run</h2><table id=\"run\">");
    let mut row = |name: &str, value: String| {
        let _ = write!(html, "<tr><th>{name}</th><td>{}</td></tr>", escape(&value));
    };
    row(
        "capfilt version",
        manifest.version.clone().unwrap_or_else(|| "unknown".into()),
    );
    row(
        "captioning model",
        manifest.model.clone().unwrap_or_else(|| "unknown".into()),
    );
    row(
        "filter model",
        manifest
            .filter_model
            .clone()
            .unwrap_or_else(|| "none (filter off)".into()),
    );
    row("inputs", manifest.inputs.join(", "));
    row(
        "rows in the manifest's run",
        manifest
            .rows
            .map(|r| r.to_string())
            .unwrap_or_else(|| "unknown".into()),
    );
    row(
        "seconds",
        manifest
            .seconds
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "unknown".into()),
    );
    row(
        "images per second",
        manifest
            .images_per_second
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "unknown".into()),
    );
    html.push_str("</table>");

    for (input, error) in &manifest.failed_inputs {
        let _ = write!(
            html,
            "<p class=\"warning\">Input {} failed: {}</p>",
            escape(input),
            escape(error)
        );
    }
}

fn write_statuses(html: &mut String, stats: &RunStats) {
    html.push_str("<h2>Rows by status</h2><table id=\"statuses\"><tr><th>status</th><th>rows</th><th>share</th></tr>");

    let mut statuses: Vec<(&String, &u64)> = stats.by_status.iter().collect();
    statuses.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (status, count) in statuses {
        let _ = write!(
            html,
            "<tr data-status=\"{s}\"><td>{s}</td><td class=\"count\">{count}</td><td class=\"count\">{share}</td></tr>",
            s = escape(status),
            share = percent(*count, stats.rows)
        );
    }
    html.push_str("</table>");
}

fn write_reasons(html: &mut String, stats: &RunStats) {
    html.push_str("<h2>Failure reasons</h2>");
    if stats.reasons.is_empty() && stats.untracked_reasons == 0 {
        html.push_str("<p>No row failed.</p>");
        return;
    }

    let mut reasons: Vec<(&(String, String), &u64)> = stats.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let _ = write!(html, "<p>{} distinct reasons; the row URL in a message is shown as &lt;url&gt;, input line numbers as &lt;n&gt;.</p>", reasons.len());
    html.push_str("<table id=\"reasons\"><tr><th>status</th><th>reason</th><th>rows</th></tr>");
    for ((status, reason), count) in reasons.iter().take(TOP_REASONS) {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td class=\"count\">{count}</td></tr>",
            escape(status),
            escape(reason)
        );
    }
    html.push_str("</table>");

    if reasons.len() > TOP_REASONS {
        let rest: u64 = reasons
            .iter()
            .skip(TOP_REASONS)
            .map(|(_, count)| **count)
            .sum();
        let _ = write!(
            html,
            "<p>{rest} more rows have {} rarer reasons.</p>",
            reasons.len() - TOP_REASONS
        );
    }
    if stats.untracked_reasons > 0 {
        let _ = write!(
            html,
            "<p>{} more rows failed with reasons beyond the tracked number.</p>",
            stats.untracked_reasons
        );
    }
}

/// Threshold markers for the score charts. Files written with different thresholds get one
/// marker each, and a warning names the thresholds.
fn threshold_markers(stats: &RunStats) -> (Vec<(f64, String)>, Option<String>) {
    let markers = stats
        .thresholds
        .iter()
        .filter_map(|t| t.parse::<f64>().ok().map(|v| (v, format!("threshold {t}"))))
        .collect();
    let note = (stats.thresholds.len() > 1).then(|| {
        let values: Vec<&str> = stats.thresholds.iter().map(String::as_str).collect();
        format!(
            "The shard files were written with different thresholds: {}.",
            values.join(", ")
        )
    });
    (markers, note)
}

fn write_scores(html: &mut String, stats: &RunStats) {
    html.push_str("<h2>ITM scores</h2>");
    if stats.web_scored == 0 && stats.captions_scored == 0 {
        html.push_str(
            "<p id=\"no-scores\">No ITM scores: the shards were written without the filter.</p>",
        );
        return;
    }

    let (markers, note) = threshold_markers(stats);
    if let Some(note) = note {
        let _ = write!(html, "<p class=\"warning\">{}</p>", escape(&note));
    }
    if markers.is_empty() {
        html.push_str("<p>The files carry no threshold in their metadata.</p>");
    }
    let _ = write!(
        html,
        "<p>Web captions kept: <span id=\"web-kept\">{}</span> of {} scored ({}). Synthetic captions kept: <span id=\"captions-kept\">{}</span> of {} ({}).</p>",
        stats.web_kept,
        stats.web_scored,
        percent(stats.web_kept, stats.web_scored),
        stats.captions_kept,
        stats.captions_scored,
        percent(stats.captions_kept, stats.captions_scored)
    );

    html.push_str("<div class=\"charts\">");
    figure(
        html,
        chart::svg(
            &stats.web_itm,
            "web-itm",
            "web captions (web_itm)",
            "ITM P(match)",
            &markers,
        ),
        "Web captions (web_itm)",
    );
    figure(
        html,
        chart::svg(
            &stats.caption_itm,
            "caption-itm",
            "synthetic captions (caption_itm)",
            "ITM P(match)",
            &markers,
        ),
        "Synthetic captions (caption_itm)",
    );
    html.push_str("</div>");
}

fn write_lengths(html: &mut String, stats: &RunStats) {
    html.push_str("<h2>Caption lengths</h2><p>Words per caption, counted on whitespace, for rows with status ok.</p><div class=\"charts\">");
    figure(
        html,
        chart::svg(
            &stats.web_words,
            "web-words",
            "web caption length",
            "words",
            &[],
        ),
        "Web captions",
    );
    figure(
        html,
        chart::svg(
            &stats.caption_words,
            "caption-words",
            "synthetic caption length",
            "words",
            &[],
        ),
        "Synthetic captions",
    );
    html.push_str("</div>");
}

fn figure(html: &mut String, svg: String, caption: &str) {
    let _ = write!(
        html,
        "<figure>{svg}<figcaption>{}</figcaption></figure>",
        escape(caption)
    );
}

fn write_gallery(html: &mut String, samples: &[Sample]) {
    let _ = write!(
        html,
        "<h2>Sampled rows</h2><p>{} rows with status ok, sampled by key hash.</p>",
        samples.len()
    );

    html.push_str("<div class=\"gallery\" id=\"gallery\">");
    for sample in samples {
        write_card(html, sample);
    }
    html.push_str("</div>");
}

fn write_card(html: &mut String, sample: &Sample) {
    html.push_str("<div class=\"card\"><div class=\"thumb\">");
    write_image(html, sample);
    html.push_str("</div>");

    let _ = write!(html, "<div class=\"key\">{}</div>", escape(&sample.key));
    let _ = write!(html, "<div class=\"url\">{}</div>", escape(&sample.url));
    match &sample.caption {
        Some(caption) => {
            let _ = write!(
                html,
                "<p><b>web:</b> <span class=\"web-caption\">{}</span> {}</p>",
                escape(caption),
                decision(sample.web_itm.as_deref(), sample.keep_web)
            );
        }
        None => html.push_str("<p><b>web:</b> <i>none</i></p>"),
    }

    html.push_str("<ul>");
    for caption in &sample.captions {
        write_synthetic(html, caption);
    }
    html.push_str("</ul></div>");
}

fn write_synthetic(html: &mut String, caption: &SyntheticCaption) {
    let _ = write!(
        html,
        "<li><span class=\"synthetic-caption\">{}</span> {}</li>",
        escape(&caption.text),
        decision(caption.itm.as_deref(), caption.keep)
    );
}

fn decision(score: Option<&str>, keep: Option<bool>) -> String {
    let score = score
        .map(|s| format!("<span class=\"score\">{}</span> ", escape(s)))
        .unwrap_or_default();
    match keep {
        Some(true) => format!("{score}<span class=\"kept\">kept</span>"),
        Some(false) => format!("{score}<span class=\"dropped\">dropped</span>"),
        None => score,
    }
}

/// Writes an `<img>` for web and file URLs only. Other schemes (`s3://`, `data:`,
/// `javascript:` or a bare path) get a note, because a browser cannot or should not load them.
fn write_image(html: &mut String, sample: &Sample) {
    let Some(src) = image_source(&sample.url) else {
        html.push_str("<span>no preview for this URL</span>");
        return;
    };

    let (width, height) = thumbnail_size(sample.width, sample.height);
    let _ = write!(
        html,
        "<img src=\"{}\" width=\"{width}\" height=\"{height}\" loading=\"lazy\" referrerpolicy=\"no-referrer\" alt=\"\">",
        escape(&src)
    );
}

fn image_source(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    matches!(parsed.scheme(), "http" | "https" | "file").then(|| parsed.to_string())
}

/// Scales the image's size to fit the thumbnail box, keeping its aspect ratio.
fn thumbnail_size(width: Option<u32>, height: Option<u32>) -> (u32, u32) {
    let (Some(width), Some(height)) = (width, height) else {
        return (THUMBNAIL, THUMBNAIL);
    };
    if width == 0 || height == 0 {
        return (THUMBNAIL, THUMBNAIL);
    }

    let scale = THUMBNAIL as f64 / width.max(height) as f64;
    let fit = |side: u32| ((side as f64 * scale).round() as u32).max(1);
    (fit(width), fit(height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<script>a&b</script>"),
            "&lt;script&gt;a&amp;b&lt;/script&gt;"
        );
        assert_eq!(
            escape("\"x' onerror='y\""),
            "&quot;x&#39; onerror=&#39;y&quot;"
        );
    }

    #[test]
    fn image_source_only_web_and_file() {
        assert_eq!(
            image_source("http://127.0.0.1:8/a b.jpg").as_deref(),
            Some("http://127.0.0.1:8/a%20b.jpg")
        );
        assert!(image_source("file:///data/a.jpg").is_some());
        assert!(image_source("javascript:alert(1)").is_none());
        assert!(image_source("s3://bucket/a.jpg").is_none());
        assert!(image_source("relative/a.jpg").is_none());
    }

    #[test]
    fn thumbnail_size_keeps_aspect() {
        assert_eq!(thumbnail_size(Some(400), Some(100)), (200, 50));
        assert_eq!(thumbnail_size(Some(50), Some(100)), (100, 200));
        assert_eq!(thumbnail_size(None, Some(100)), (200, 200));
        assert_eq!(thumbnail_size(Some(0), Some(0)), (200, 200));
    }
}
