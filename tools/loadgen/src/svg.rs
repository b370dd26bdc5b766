//! A latency-by-percentile plot in the HdrHistogram style, as a standalone SVG 1.1 document
//! written by hand (no plotting dependency).
//!
//! The x axis is the percentile q on a log scale of 1 / (1 - q), from 0 % to 99.999 %, so the
//! tail gets as much room as the body; the y axis is latency in ms, linear from 0.

use hdrhistogram::Histogram;
use std::fmt::Write;

/// Decades of 1 / (1 - q) on the x axis: 0 % .. 99.999 %.
const DECADES: f64 = 5.0;
/// Points per decade of each curve.
const POINTS_PER_DECADE: u32 = 100;
const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 540.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 70.0;
/// Horizontal gridlines (at most, about).
const Y_TICKS: f64 = 6.0;

/// One curve: a latency histogram in µs.
pub struct Series<'a> {
    pub name: &'a str,
    /// An SVG color (`#1f77b4`).
    pub color: &'a str,
    /// An SVG `stroke-dasharray` (`6 3`), so that curves that coincide stay visible.
    pub dash: Option<&'a str>,
    pub histogram: &'a Histogram<u64>,
}

fn dash_attribute(s: &Series<'_>) -> String {
    s.dash
        .map(|d| format!(r#" stroke-dasharray="{}""#, escape(d)))
        .unwrap_or_default()
}

/// `s` with XML's special characters escaped.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The curve of `h`: (decades of 1 / (1 - q), latency in ms), from q = 0 to q = 99.999 %.
pub fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    let n = (DECADES as u32) * POINTS_PER_DECADE;
    (0..=n)
        .map(|i| {
            let x = f64::from(i) / f64::from(POINTS_PER_DECADE);
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q) as f64 / 1e3)
        })
        .collect()
}

/// A "nice" tick step (1, 2, 2.5 or 5 times a power of ten) for a range of `max`.
fn tick_step(max: f64) -> f64 {
    let raw = (max / Y_TICKS).max(1e-6);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&s| s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// `v` with as few decimals as `step` needs.
fn tick_label(v: f64, step: f64) -> String {
    let decimals = (0..=6)
        .find(|&d| {
            let scaled = step * 10f64.powi(d);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(6) as usize;
    format!("{v:.decimals$}")
}

/// The plot of `series` (empty histograms are listed in the legend, not drawn).
pub fn percentile_plot(title: &str, series: &[Series<'_>]) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let curves: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            if s.histogram.is_empty() {
                Vec::new()
            } else {
                percentile_points(s.histogram)
            }
        })
        .collect();
    let y_data_max = curves
        .iter()
        .flatten()
        .map(|&(_, ms)| ms)
        .fold(0.0f64, f64::max)
        .max(0.001);
    let step = tick_step(y_data_max);
    let y_max = (y_data_max / step).ceil() * step;
    let px = |x: f64| LEFT + x / DECADES * plot_w;
    let py = |ms: f64| TOP + plot_h - ms / y_max * plot_h;

    let mut svg = String::new();
    // Writing into a String cannot fail; the results are ignored below for that reason.
    let _ = writeln!(svg, r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#);
    let _ = writeln!(
        svg,
        r#"<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">"#
    );
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, "<title>{}</title>", escape(title));
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );

    // Grid and y ticks.
    let _ = writeln!(svg, r##"<g stroke="#dddddd" stroke-width="1">"##);
    let mut ticks = Vec::new();
    let mut v = 0.0;
    while v <= y_max + step / 2.0 {
        ticks.push(v);
        v += step;
    }
    for &t in &ticks {
        let y = py(t);
        let _ = writeln!(
            svg,
            r#"<line x1="{LEFT:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/>"#,
            LEFT + plot_w
        );
    }
    for d in 0..=(DECADES as u32) {
        let x = px(f64::from(d));
        let _ = writeln!(
            svg,
            r#"<line x1="{x:.1}" y1="{TOP:.1}" x2="{x:.1}" y2="{:.1}"/>"#,
            TOP + plot_h
        );
    }
    let _ = writeln!(svg, "</g>");
    let _ = writeln!(svg, r#"<g text-anchor="end">"#);
    for &t in &ticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT - 6.0,
            py(t) + 4.0,
            tick_label(t, step)
        );
    }
    let _ = writeln!(svg, "</g>");
    let _ = writeln!(svg, r#"<g text-anchor="middle">"#);
    for (d, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{label}</text>"#,
            px(d as f64),
            TOP + plot_h + 18.0
        );
    }
    let _ = writeln!(svg, "</g>");

    // Axes and their labels.
    let _ = writeln!(
        svg,
        r#"<path d="M {LEFT:.1} {TOP:.1} V {:.1} H {:.1}" fill="none" stroke="black" stroke-width="1"/>"#,
        TOP + plot_h,
        LEFT + plot_w
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (log scale of 1/(1-q))</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 22.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="20" y="{:.1}" text-anchor="middle" transform="rotate(-90 20 {:.1})">latency (ms)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // Curves.
    for (s, points) in series.iter().zip(&curves) {
        if points.is_empty() {
            continue;
        }
        let coords: Vec<String> = points
            .iter()
            .map(|&(x, ms)| format!("{:.1},{:.1}", px(x), py(ms)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="2"{} points="{}"/>"#,
            escape(s.name),
            escape(s.color),
            dash_attribute(s),
            coords.join(" ")
        );
    }

    // Legend.
    let legend_x = LEFT + 12.0;
    let legend_y = TOP + 12.0;
    let line_h = 18.0;
    let _ = writeln!(
        svg,
        r##"<rect x="{legend_x:.1}" y="{legend_y:.1}" width="420" height="{:.1}" fill="white" fill-opacity="0.85" stroke="#999999"/>"##,
        line_h * series.len() as f64 + 8.0
    );
    for (i, s) in series.iter().enumerate() {
        let y = legend_y + 4.0 + line_h * (i as f64 + 0.5);
        let h = s.histogram;
        let stats = if h.is_empty() {
            "no samples".to_string()
        } else {
            format!(
                "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                h.value_at_quantile(0.5) as f64 / 1e3,
                h.value_at_quantile(0.99) as f64 / 1e3,
                h.max() as f64 / 1e3
            )
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="3"{}/>"#,
            legend_x + 8.0,
            legend_x + 32.0,
            escape(s.color),
            dash_attribute(s)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{} ({stats})</text>"#,
            legend_x + 40.0,
            y + 4.0,
            escape(s.name)
        );
    }
    let _ = writeln!(svg, "</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{new_histogram, record_ns};

    fn histogram(range_us: std::ops::Range<u64>) -> Histogram<u64> {
        let mut h = new_histogram();
        for us in range_us {
            record_ns(&mut h, us * 1_000);
        }
        h
    }

    /// The (x, y) pairs of each polyline.
    fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                let points = l
                    .split("points=\"")
                    .nth(1)
                    .and_then(|r| r.split('"').next())
                    .unwrap_or("");
                points
                    .split(' ')
                    .filter_map(|p| {
                        let (x, y) = p.split_once(',')?;
                        Some((x.parse().ok()?, y.parse().ok()?))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn plot_is_a_standalone_svg_with_both_series() {
        let publish = histogram(100..2_000);
        let e2e = histogram(300..5_000);
        let svg = percentile_plot(
            "a <title> & more",
            &[
                Series {
                    name: "publish",
                    color: "#1f77b4",
                    dash: None,
                    histogram: &publish,
                },
                Series {
                    name: "end-to-end",
                    color: "#d62728",
                    dash: Some("6 3"),
                    histogram: &e2e,
                },
            ],
        );
        assert!(svg.starts_with("<?xml version=\"1.0\""));
        assert!(svg.contains(r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1""#));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;title&gt; &amp; more"));
        assert!(!svg.contains("<title> &"));
        assert!(svg.contains("data-name=\"publish\""));
        assert!(svg.contains("data-name=\"end-to-end\""));
        assert_eq!(
            svg.matches(r#"stroke-dasharray="6 3""#).count(),
            2,
            "the e2e curve and its legend line"
        );
        assert!(svg.contains("99.999%") && svg.contains("latency (ms)"));
        assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
        let lines = polylines(&svg);
        assert_eq!(lines.len(), 2);
        for line in &lines {
            assert_eq!(line.len(), 501);
            for &(x, y) in line {
                assert!(
                    (LEFT - 0.1..=WIDTH - RIGHT + 0.1).contains(&x),
                    "x {x} outside the plot"
                );
                assert!(
                    (TOP - 0.1..=HEIGHT - BOTTOM + 0.1).contains(&y),
                    "y {y} outside the plot"
                );
            }
            // Latency never falls as the percentile rises (y grows downwards).
            assert!(line.windows(2).all(|w| w[1].1 <= w[0].1 && w[1].0 > w[0].0));
        }
    }

    #[test]
    fn empty_series_are_listed_not_drawn() {
        let empty = new_histogram();
        let svg = percentile_plot(
            "t",
            &[Series {
                name: "e2e",
                color: "red",
                dash: None,
                histogram: &empty,
            }],
        );
        assert!(polylines(&svg).is_empty());
        assert!(svg.contains("no samples"));
    }

    #[test]
    fn percentile_points_span_zero_to_five_nines() {
        let h = histogram(1..100_001);
        let p = percentile_points(&h);
        assert_eq!(p.first().map(|p| p.0), Some(0.0));
        assert_eq!(p.last().map(|p| p.0), Some(5.0));
        assert!(p[0].1 <= 0.002);
        let at_99 = p[2 * POINTS_PER_DECADE as usize].1;
        assert!((at_99 - 99.0).abs() < 0.2, "p99 {at_99} ms");
    }

    #[test]
    fn ticks_are_nice() {
        assert_eq!(tick_step(6.0), 1.0);
        assert_eq!(tick_step(11.0), 2.0);
        assert_eq!(tick_step(14.0), 2.5);
        assert_eq!(tick_step(0.03), 0.005);
        assert_eq!(tick_label(2.5, 2.5), "2.5");
        assert_eq!(tick_label(4.0, 2.0), "4");
        assert_eq!(tick_label(0.01, 0.005), "0.010");
    }
}
