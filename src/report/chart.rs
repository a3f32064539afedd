//! Histograms with fixed bins, filled while shards stream by, and drawn as inline SVG so the
//! report needs no script and nothing from the network.

use std::fmt::Write;

use super::page::escape;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 48.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 36.0;

/// Counts of values in equal-width bins over `[low, high)`. Values at or above `high` go to the
/// last bin, which `open_ended` labels as "high+" rather than as a closed range.
#[derive(Debug, Clone)]
pub struct Histogram {
    low: f64,
    high: f64,
    counts: Vec<u64>,
    open_ended: bool,
}

impl Histogram {
    /// Bins for probabilities: `bins` equal parts of [0, 1], with 1.0 in the last one.
    pub fn unit(bins: usize) -> Self {
        Self {
            low: 0.0,
            high: 1.0,
            counts: vec![0; bins],
            open_ended: false,
        }
    }

    /// Creates one bin per whole number from 0 to `max - 1`, and a last bin for `max` and above.
    pub fn integers(max: u32) -> Self {
        Self {
            low: 0.0,
            high: max as f64,
            counts: vec![0; max as usize + 1],
            open_ended: true,
        }
    }

    pub fn add(&mut self, value: f64) {
        if !value.is_finite() {
            return;
        }

        let bins = if self.open_ended {
            self.counts.len() - 1
        } else {
            self.counts.len()
        };
        let position = (value - self.low) / (self.high - self.low) * bins as f64;
        let index = (position.max(0.0) as usize).min(self.counts.len() - 1);
        self.counts[index] += 1;
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn bin_width(&self) -> f64 {
        let bins = if self.open_ended {
            self.counts.len() - 1
        } else {
            self.counts.len()
        };
        (self.high - self.low) / bins as f64
    }

    fn bin_label(&self, index: usize) -> String {
        let start = self.low + index as f64 * self.bin_width();
        if self.open_ended && index == self.counts.len() - 1 {
            return format!("{}+", format_number(start));
        }
        if self.open_ended && self.bin_width() == 1.0 {
            return format_number(start);
        }
        format!(
            "{} to {}",
            format_number(start),
            format_number(start + self.bin_width())
        )
    }

    /// Returns the x position of `value` on the chart's axis, or `None` when it lies outside it.
    fn x_of(&self, value: f64) -> Option<f64> {
        let span = if self.open_ended {
            self.high + self.bin_width() - self.low
        } else {
            self.high - self.low
        };
        let fraction = (value - self.low) / span;
        (0.0..=1.0)
            .contains(&fraction)
            .then(|| LEFT + fraction * plot_width())
    }
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.2}")
    }
}

/// Draws `histogram` as an SVG bar chart. `markers` are values marked with a dashed vertical
/// line and a label, such as the filter threshold.
pub fn svg(
    histogram: &Histogram,
    id: &str,
    title: &str,
    axis: &str,
    markers: &[(f64, String)],
) -> String {
    let mut svg = String::new();
    let max = histogram.counts.iter().copied().max().unwrap_or(0).max(1);

    let _ = write!(
        svg,
        r#"<svg id="{id}" class="chart" data-total="{total}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{label}">"#,
        id = escape(id),
        total = histogram.total(),
        label = escape(title),
    );
    let _ = write!(svg, "<title>{}</title>", escape(title));
    draw_axes(&mut svg, max, axis);
    draw_bars(&mut svg, histogram, max);
    draw_tick_labels(&mut svg, histogram);
    for (value, label) in markers {
        draw_marker(&mut svg, histogram, *value, label);
    }
    svg.push_str("</svg>");
    svg
}

fn draw_axes(svg: &mut String, max: u64, axis: &str) {
    let bottom = TOP + plot_height();
    let right = LEFT + plot_width();

    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#555"/>"##
    );
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#555"/>"##
    );

    let _ = write!(
        svg,
        r#"<text x="{x}" y="{y}" text-anchor="end" class="tick">{max}</text>"#,
        x = LEFT - 4.0,
        y = TOP + 10.0
    );
    let _ = write!(
        svg,
        r#"<text x="{x}" y="{bottom}" text-anchor="end" class="tick">0</text>"#,
        x = LEFT - 4.0
    );
    let _ = write!(
        svg,
        r#"<text x="{x}" y="{y}" text-anchor="middle" class="axis">{axis}</text>"#,
        x = LEFT + plot_width() / 2.0,
        y = HEIGHT - 4.0,
        axis = escape(axis)
    );
}

/// Draws one bar per bin; each has a tooltip with its range and count, since the axis labels
/// only a few bins.
fn draw_bars(svg: &mut String, histogram: &Histogram, max: u64) {
    let slot = plot_width() / histogram.counts.len() as f64;
    let gap = (slot * 0.1).min(2.0);

    for (index, &count) in histogram.counts.iter().enumerate() {
        let height = count as f64 / max as f64 * plot_height();
        let x = LEFT + index as f64 * slot + gap / 2.0;
        let y = TOP + plot_height() - height;
        let _ = write!(
            svg,
            r##"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{height:.1}" fill="#4a7bb7" data-count="{count}"><title>{label}: {count}</title></rect>"##,
            w = slot - gap,
            label = escape(&histogram.bin_label(index)),
        );
    }
}

/// Labels the axis at its start, middle and end. An open last bin is labelled at its start, as
/// "high+".
fn draw_tick_labels(svg: &mut String, histogram: &Histogram) {
    let y = TOP + plot_height() + 14.0;
    let middle = (histogram.low + histogram.high) / 2.0;
    let middle = if histogram.open_ended {
        middle.round()
    } else {
        middle
    };
    let (last, last_anchor) = if histogram.open_ended {
        (format!("{}+", format_number(histogram.high)), "start")
    } else {
        (format_number(histogram.high), "end")
    };
    let ticks = [
        (histogram.low, format_number(histogram.low), "start"),
        (middle, format_number(middle), "middle"),
        (histogram.high, last, last_anchor),
    ];

    for (value, text, anchor) in ticks {
        let Some(x) = histogram.x_of(value) else {
            continue;
        };
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{y}" text-anchor="{anchor}" class="tick">{text}</text>"#
        );
    }
}

fn draw_marker(svg: &mut String, histogram: &Histogram, value: f64, label: &str) {
    let Some(x) = histogram.x_of(value) else {
        return;
    };

    let bottom = TOP + plot_height();
    let _ = write!(
        svg,
        r##"<line class="marker" data-value="{value}" x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="#c0392b" stroke-width="2" stroke-dasharray="5 3"/>"##
    );
    let _ = write!(
        svg,
        r##"<text x="{tx:.1}" y="{ty}" fill="#c0392b" class="tick">{label}</text>"##,
        tx = x + 4.0,
        ty = TOP + 10.0,
        label = escape(label)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_histogram_bins_edges() {
        let mut histogram = Histogram::unit(20);
        for value in [0.0, 0.049, 0.05, 0.5, 0.999, 1.0, f64::NAN] {
            histogram.add(value);
        }

        assert_eq!(histogram.counts[0], 2);
        assert_eq!(histogram.counts[1], 1);
        assert_eq!(histogram.counts[10], 1);
        assert_eq!(histogram.counts[19], 2, "1.0 falls in the last bin");
        assert_eq!(histogram.total(), 6, "NaN is not counted");
    }

    #[test]
    fn integer_histogram_open_last_bin() {
        let mut histogram = Histogram::integers(40);
        for value in [0.0, 3.0, 39.0, 40.0, 500.0] {
            histogram.add(value);
        }

        assert_eq!(histogram.counts.len(), 41);
        assert_eq!(histogram.counts[3], 1);
        assert_eq!(histogram.counts[39], 1);
        assert_eq!(histogram.counts[40], 2);
        assert_eq!(histogram.bin_label(40), "40+");
        assert_eq!(histogram.bin_label(3), "3");
    }

    #[test]
    fn marker_drawn_at_threshold() {
        let histogram = Histogram::unit(20);
        let svg = svg(
            &histogram,
            "scores",
            "ITM",
            "P(match)",
            &[(0.5, "threshold 0.5".into())],
        );

        let x = LEFT + 0.5 * plot_width();
        assert!(svg.contains(&format!(r#"x1="{x:.1}""#)), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 20);
    }

    #[test]
    fn marker_outside_axis_skipped() {
        let histogram = Histogram::unit(10);
        let svg = svg(
            &histogram,
            "scores",
            "ITM",
            "P(match)",
            &[(1.5, "threshold 1.5".into())],
        );
        assert!(!svg.contains("marker"));
    }
}
