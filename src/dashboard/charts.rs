//! SVG charts computed on the server: coordinates, ticks and tooltips as plain
//! data that `templates/dashboard/macros.html.j2` draws (so every label is
//! escaped like the rest of the page). One point per run, evenly spaced in run
//! order, each linked to its run.

use serde::Serialize;

/// Drawing area of a full chart, in SVG units.
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
/// Room for the y labels on the left and the x labels below.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 28.0;

/// A line chart.
#[derive(Debug, Clone, Serialize)]
pub struct Chart {
    /// Element id (`chart-ID`).
    pub id: String,
    /// Title above it.
    pub title: String,
    /// SVG width.
    pub width: f64,
    /// SVG height.
    pub height: f64,
    /// Left edge of the plot.
    pub left: f64,
    /// Right edge of the plot.
    pub right: f64,
    /// Top of the plot.
    pub top: f64,
    /// Bottom of the plot.
    pub bottom: f64,
    /// Horizontal grid lines with their labels.
    pub y_ticks: Vec<Tick>,
    /// Run ids under the points (thinned out when crowded).
    pub x_ticks: Vec<Tick>,
    /// The lines.
    pub series: Vec<Series>,
    /// Whether any series has a value.
    pub empty: bool,
}

/// A labelled position on an axis.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Position along the axis.
    pub at: f64,
    /// Label.
    pub label: String,
}

/// One line of a chart.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// CSS class (colour).
    pub class: String,
    /// `x,y x,y …` of the points that have values.
    pub polyline: String,
    /// The points.
    pub points: Vec<Point>,
}

/// One run on a line.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// X.
    pub x: f64,
    /// Y.
    pub y: f64,
    /// The run.
    pub run_id: i64,
    /// Where the point leads.
    pub href: String,
    /// Hover text.
    pub tooltip: String,
    /// `compare` flagged this run against its previous comparable run.
    pub regression: bool,
}

/// What a chart shows for one run.
pub struct RunValue {
    /// The run.
    pub run_id: i64,
    /// Where its point links.
    pub href: String,
    /// Context for the tooltip (date, label).
    pub context: String,
    /// The value, if the run has one.
    pub value: Option<f64>,
    /// Flagged as a regression.
    pub regression: bool,
}

/// A line's values before layout.
pub struct Line {
    /// Legend text.
    pub name: String,
    /// CSS class.
    pub class: String,
    /// One value per run, in run order (the same runs for every line).
    pub values: Vec<RunValue>,
}

/// How values read.
#[derive(Clone, Copy)]
pub enum Unit {
    /// A 0–1 ratio shown as a percentage, axis fixed at 0–100%.
    Ratio,
    /// Milliseconds.
    Millis,
    /// Tokens per second.
    TokPerSec,
    /// Bytes, shown in MiB.
    Bytes,
}

impl Unit {
    /// What axis labels are divided by (bytes are labelled in MiB).
    fn scale(self) -> f64 {
        match self {
            Unit::Bytes => (1u64 << 20) as f64,
            _ => 1.0,
        }
    }

    /// A value in a tooltip, with its unit.
    fn format(self, v: f64) -> String {
        match self {
            Unit::Ratio => format!("{:.0}%", v * 100.0),
            Unit::Millis if v >= 10_000.0 => format!("{:.1} s", v / 1000.0),
            Unit::Millis => format!("{v:.0} ms"),
            Unit::TokPerSec => format!("{v:.1} tok/s"),
            Unit::Bytes => format!("{:.0} MiB", v / (1u64 << 20) as f64),
        }
    }
}

/// Lays out `lines` (sharing one y axis from 0) as a chart.
pub fn line_chart(id: &str, title: &str, unit: Unit, lines: Vec<Line>) -> Chart {
    let runs = lines.first().map_or(0, |l| l.values.len());
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |i: usize| {
        if runs <= 1 {
            LEFT + plot_w / 2.0
        } else {
            LEFT + plot_w * i as f64 / (runs - 1) as f64
        }
    };
    let max = lines
        .iter()
        .flat_map(|l| l.values.iter().filter_map(|v| v.value))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = match unit {
        Unit::Ratio => 1.0,
        _ => nice_ceiling(max / unit.scale()) * unit.scale(),
    };
    let y_of = |v: f64| TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
    let y_ticks = (0..=4)
        .map(|i| {
            let v = top * i as f64 / 4.0;
            Tick {
                at: round(y_of(v)),
                label: match unit {
                    Unit::Ratio => format!("{:.0}%", v * 100.0),
                    // The unit is in the chart's title; as many decimals as the step needs.
                    _ => format!(
                        "{:.*}",
                        decimals(top / unit.scale() / 4.0),
                        v / unit.scale()
                    ),
                },
            }
        })
        .collect();
    // At most about 12 run labels under the axis.
    let step = runs.div_ceil(12).max(1);
    let x_ticks = lines
        .first()
        .map(|l| {
            l.values
                .iter()
                .enumerate()
                .filter(|(i, _)| i % step == 0 || *i + 1 == runs)
                .map(|(i, v)| Tick {
                    at: round(x_of(i)),
                    label: format!("#{}", v.run_id),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut empty = true;
    let series = lines
        .into_iter()
        .map(|line| {
            let points: Vec<Point> = line
                .values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let value = v.value.filter(|v| v.is_finite())?;
                    Some(Point {
                        x: round(x_of(i)),
                        y: round(y_of(value)),
                        run_id: v.run_id,
                        href: v.href.clone(),
                        tooltip: format!(
                            "run {} · {}: {}{}{}",
                            v.run_id,
                            line.name,
                            unit.format(value),
                            if v.context.is_empty() { "" } else { " · " },
                            v.context,
                        ) + if v.regression { " · REGRESSION" } else { "" },
                        regression: v.regression,
                    })
                })
                .collect();
            empty &= points.is_empty();
            Series {
                name: line.name,
                class: line.class,
                polyline: polyline(&points),
                points,
            }
        })
        .collect();
    Chart {
        id: id.to_string(),
        title: title.to_string(),
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        right: WIDTH - RIGHT,
        top: TOP,
        bottom: HEIGHT - BOTTOM,
        y_ticks,
        x_ticks,
        series,
        empty,
    }
}

/// A small chart with no axes, for a table cell.
#[derive(Debug, Clone, Serialize)]
pub struct Sparkline {
    /// SVG width.
    pub width: f64,
    /// SVG height.
    pub height: f64,
    /// `x,y …`.
    pub polyline: String,
    /// The points.
    pub points: Vec<Point>,
}

/// The last runs' values (0–1 ratios) as a sparkline.
pub fn sparkline(values: Vec<RunValue>, unit: Unit) -> Sparkline {
    // Padding leaves room for a regression ring at the edges.
    let (width, height, pad) = (120.0, 30.0, 5.0);
    let n = values.len();
    let max = match unit {
        Unit::Ratio => 1.0,
        _ => values
            .iter()
            .filter_map(|v| v.value)
            .fold(0.0_f64, f64::max)
            .max(f64::MIN_POSITIVE),
    };
    let points: Vec<Point> = values
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let value = v.value.filter(|v| v.is_finite())?;
            let x = if n <= 1 {
                width / 2.0
            } else {
                pad + (width - 2.0 * pad) * i as f64 / (n - 1) as f64
            };
            let y = pad + (height - 2.0 * pad) * (1.0 - (value / max).clamp(0.0, 1.0));
            Some(Point {
                x: round(x),
                y: round(y),
                run_id: v.run_id,
                href: v.href.clone(),
                tooltip: format!("run {}: {} · {}", v.run_id, unit.format(value), v.context),
                regression: v.regression,
            })
        })
        .collect();
    Sparkline {
        width,
        height,
        polyline: polyline(&points),
        points,
    }
}

/// Decimals that write multiples of `step` exactly (up to 3).
fn decimals(step: f64) -> usize {
    (0..3)
        .find(|&d| {
            let scaled = step * 10f64.powi(d as i32);
            (scaled - scaled.round()).abs() < 1e-9
        })
        .unwrap_or(3)
}

fn polyline(points: &[Point]) -> String {
    points
        .iter()
        .map(|p| format!("{},{}", p.x, p.y))
        .collect::<Vec<_>>()
        .join(" ")
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The smallest 1, 2, 4, 6 or 8 × 10ⁿ at or above `max` (1 for nothing):
/// its quarters, the grid lines, are round numbers too.
fn nice_ceiling(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 4.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= max)
        .unwrap_or(10.0 * magnitude)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(vs: &[Option<f64>]) -> Vec<RunValue> {
        vs.iter()
            .enumerate()
            .map(|(i, &value)| RunValue {
                run_id: i as i64 + 1,
                href: format!("/dashboard/runs/{}", i + 1),
                context: String::new(),
                value,
                regression: i == 2,
            })
            .collect()
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(7.0), 8.0);
        assert_eq!(nice_ceiling(9.0), 10.0);
        assert_eq!(nice_ceiling(1300.0), 2000.0);
        assert_eq!(nice_ceiling(2100.0), 4000.0);
        assert_eq!(nice_ceiling(2000.0), 2000.0);
        assert_eq!(nice_ceiling(4.2), 6.0);
        assert_eq!((decimals(5.0), decimals(0.5), decimals(0.25)), (0, 1, 2));
    }

    #[test]
    fn one_point_per_run_with_a_value_left_to_right() {
        let chart = line_chart(
            "e2e",
            "e2e",
            Unit::Millis,
            vec![Line {
                name: "p50".into(),
                class: "s0".into(),
                values: values(&[Some(1000.0), None, Some(1500.0), Some(500.0)]),
            }],
        );
        let points = &chart.series[0].points;
        assert_eq!(
            points.iter().map(|p| p.run_id).collect::<Vec<_>>(),
            [1, 3, 4]
        );
        assert!(points.windows(2).all(|w| w[0].x < w[1].x));
        // Larger values sit higher (smaller y); the axis goes up to 2000 ms.
        assert!(points[1].y < points[0].y && points[0].y < points[2].y);
        assert_eq!(chart.y_ticks.last().unwrap().label, "2000");
        assert_eq!(chart.y_ticks[1].label, "500");
        assert!(points[1].regression && points[1].tooltip.contains("REGRESSION"));
        assert_eq!(chart.series[0].polyline.split(' ').count(), 3);
        assert!(!chart.empty);
    }

    #[test]
    fn ratios_span_zero_to_one_and_a_single_run_is_centred() {
        let chart = line_chart(
            "pass",
            "pass",
            Unit::Ratio,
            vec![Line {
                name: "pass rate".into(),
                class: "s0".into(),
                values: values(&[Some(1.0)]),
            }],
        );
        let p = &chart.series[0].points[0];
        assert_eq!(p.y, chart.top);
        assert_eq!(p.x, round((chart.left + chart.right) / 2.0));
        assert_eq!(chart.y_ticks[0].label, "0%");
        assert_eq!(chart.y_ticks[4].label, "100%");
        let empty = line_chart(
            "x",
            "x",
            Unit::Bytes,
            vec![Line {
                name: "m".into(),
                class: "s0".into(),
                values: values(&[None, None]),
            }],
        );
        assert!(empty.empty);
        // Memory is labelled in round MiB.
        let memory = line_chart(
            "m",
            "m",
            Unit::Bytes,
            vec![Line {
                name: "m".into(),
                class: "s0".into(),
                values: values(&[Some(355.0 * (1u64 << 20) as f64)]),
            }],
        );
        let labels: Vec<&str> = memory.y_ticks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["0", "100", "200", "300", "400"]);
    }
}
