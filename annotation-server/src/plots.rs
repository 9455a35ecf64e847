//! SVG line charts of round metrics (feature `plots`), drawn with plotters'
//! SVG backend. The dashboard serves them, and the trainer writes the same
//! charts as files next to a round's outputs, so both show identical plots.
//!
//! Metric conventions (see [`crate::api::RoundMetrics`]): `summary` is an
//! object of name → number (plotted over rounds: x = round id), `series` is an
//! object of name → `[[x, y], ...]` (plotted per round, one chart per entry).
//!
//! All text (titles, labels, series names) is escaped by the SVG backend, and
//! control characters are removed, so hostile names cannot inject markup.
use crate::api::Round;
use plotters::prelude::*;
use std::collections::BTreeMap;

/// Chart size in pixels.
pub const WIDTH: u32 = 640;
/// Chart height in pixels.
pub const HEIGHT: u32 = 360;

/// Points whose coordinates are larger than this (in magnitude) are skipped
/// like NaN and infinities: they would make the axis range overflow.
const LIMIT: f64 = 1e100;

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

type Series = (String, Vec<(f64, f64)>);
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Text fit for an SVG `<text>`: no control characters (invalid in XML),
/// at most `max` characters.
fn clean(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '\u{fffe}' | '\u{ffff}'))
        .take(max + 1)
        .collect();
    if out.chars().count() > max {
        out = out.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
    }
    out
}

fn usable(v: f64) -> bool {
    v.is_finite() && v.abs() < LIMIT
}

/// An axis range covering `lo..hi` with margins `below` and `above` (as
/// fractions of the span), never empty.
fn axis(lo: f64, hi: f64, below: f64, above: f64) -> (f64, f64) {
    let span = hi - lo;
    if span <= f64::EPSILON * lo.abs().max(hi.abs()).max(1e-300) {
        let d = (lo.abs() * 0.1).max(0.5);
        return (lo - d, hi + d);
    }
    (lo - span * below, hi + span * above)
}

/// A tick label: whole numbers without decimals, others short.
fn tick(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v != 0.0 && (v.abs() < 1e-3 || v.abs() >= 1e6) {
        format!("{v:.2e}")
    } else {
        let t = format!("{v:.4}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// A line chart of `series` (name, points) as an SVG document. Points with a
/// NaN or infinite coordinate are skipped; with no points at all the chart
/// says "no data". Never panics on any input.
pub fn line_chart_svg(title: &str, x_label: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let title = clean(title, 120);
    let x_label = clean(x_label, 80);
    let data: Vec<Series> = series
        .iter()
        .map(|(name, pts)| {
            let pts: Vec<(f64, f64)> = pts
                .iter()
                .copied()
                .filter(|&(x, y)| usable(x) && usable(y))
                .collect();
            (clean(name, 60), pts)
        })
        .filter(|(_, pts)| !pts.is_empty())
        .collect();
    let drawn = std::panic::catch_unwind(|| {
        let mut out = String::new();
        let ok = {
            let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
            let r = if data.is_empty() {
                draw_message(&root, &title, "no data")
            } else {
                draw_lines(&root, &title, &x_label, &data)
            };
            r.is_ok() && root.present().is_ok()
        };
        ok.then_some(out)
    });
    match drawn {
        Ok(Some(svg)) => svg,
        // plotters failed on some odd input: a chart that says so, not an error page
        _ => {
            let mut out = String::new();
            {
                let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
                let _ = draw_message(&root, &title, "cannot draw this data");
                let _ = root.present();
            }
            out
        }
    }
}

fn draw_message<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    msg: &str,
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let area = root.titled(title, ("sans-serif", 20))?;
    let (w, h) = area.dim_in_pixel();
    let style = TextStyle::from(("sans-serif", 18).into_font())
        .color(&RGBColor(110, 110, 110))
        .pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Center,
        ));
    area.draw(&Text::new(
        msg.to_string(),
        (w as i32 / 2, h as i32 / 2),
        style,
    ))?;
    Ok(())
}

fn draw_lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    data: &[Series],
) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let all = data.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    // whole-number x (round ids, steps) with few values: one tick per value
    let whole_x = data
        .iter()
        .all(|(_, p)| p.iter().all(|(x, _)| x.fract() == 0.0));
    let x_ticks = if whole_x && x1 - x0 < 8.0 {
        (x1 - x0) as usize + 1
    } else {
        8
    };
    let (x0, x1) = axis(x0, x1, 0.04, 0.04);
    // room at the top for the legend
    let (y0, y1) = axis(y0, y1, 0.08, 0.25);
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .x_labels(x_ticks)
        .y_labels(6)
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .label_style(("sans-serif", 12))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for (i, (name, pts)) in data.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        // markers keep short series (one point per round) visible
        if pts.len() <= 60 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 13))
        .draw()?;
    Ok(())
}

/// Every summary metric over `rounds`: name → (round id, value), by round id.
pub fn summary_over_rounds(rounds: &[Round]) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut by_name: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut sorted: Vec<&Round> = rounds.iter().collect();
    sorted.sort_by_key(|r| r.id);
    for r in sorted {
        for (k, v) in r.metrics_typed().summary {
            by_name.entry(k).or_default().push((r.id as f64, v));
        }
    }
    by_name
}

/// The chart of one summary metric over rounds (x = round id).
pub fn summary_chart_svg(metric: &str, points: &[(f64, f64)]) -> String {
    line_chart_svg(
        &format!("{metric} over rounds"),
        "round",
        &[(metric.to_string(), points.to_vec())],
    )
}

/// The chart of one entry of a round's `metrics.series`.
pub fn series_chart_svg(round: &Round, name: &str, points: &[(f64, f64)]) -> String {
    line_chart_svg(
        &format!("{name} (round {}: {})", round.id, round.name),
        "step",
        &[(name.to_string(), points.to_vec())],
    )
}

/// All plots of a set of rounds, as (file stem, SVG): one per summary metric
/// over the rounds (`summary-NAME`), and one per series entry of each round
/// (`round-ID-NAME`). File stems are safe file names (see [`file_stem`]).
pub fn all_plots(rounds: &[Round]) -> Vec<(String, String)> {
    let mut out = vec![];
    for (name, pts) in summary_over_rounds(rounds) {
        out.push((
            format!("summary-{}", file_stem(&name)),
            summary_chart_svg(&name, &pts),
        ));
    }
    for r in rounds {
        for (name, pts) in r.metrics_typed().series {
            out.push((
                format!("round-{}-{}", r.id, file_stem(&name)),
                series_chart_svg(r, &name, &pts),
            ));
        }
    }
    out
}

/// A metric name as a file name stem: `[A-Za-z0-9_-]` kept, anything else
/// becomes `_`; at most 64 characters; never empty.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_lines_and_legends() {
        let svg = line_chart_svg(
            "losses",
            "step",
            &[
                ("rm_loss".into(), vec![(0.0, 0.7), (1.0, 0.5), (2.0, 0.4)]),
                (
                    "policy_loss".into(),
                    vec![(0.0, 1.0), (2.0, f64::NAN), (3.0, 0.2)],
                ),
            ],
        );
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.contains("rm_loss") && svg.contains("policy_loss"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn empty_and_degenerate_inputs() {
        for series in [
            vec![],
            vec![("x".to_string(), vec![])],
            vec![("x".to_string(), vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])],
        ] {
            let svg = line_chart_svg("t", "x", &series);
            assert!(svg.contains("no data"), "{svg}");
        }
        // one point, constant values, huge values
        for pts in [
            vec![(1.0, 1.0)],
            vec![(1.0, 5.0), (2.0, 5.0)],
            vec![(0.0, 1e99), (1.0, -1e99)],
            vec![(0.0, 1e-300), (1.0, 2e-300)],
        ] {
            let svg = line_chart_svg("t", "x", &[("s".into(), pts)]);
            assert!(svg.contains(">s\n<") || svg.contains("s\n"), "{svg}");
            assert!(!svg.contains("no data"));
        }
    }

    #[test]
    fn hostile_text_is_escaped() {
        let svg = line_chart_svg(
            "<script>alert(1)</script>\u{0}&",
            "x\"><img src=x onerror=alert(1)>",
            &[("</text><script>".into(), vec![(0.0, 1.0), (1.0, 2.0)])],
        );
        assert!(!svg.contains("<script"), "{svg}");
        assert!(!svg.contains("<img"), "{svg}");
        assert!(!svg.contains('\u{0}'));
        assert!(svg.contains("&lt;script&gt;"));
    }

    #[test]
    fn metrics_conventions() {
        let m = crate::api::RoundMetrics::from_value(&serde_json::json!({
            "summary": {"gold_reward": 0.5, "kl": 0.1, "note": "x"},
            "series": {"rm_loss": [[0, 0.7], [1, 0.6], ["bad"], [2]], "empty": []},
            "progress": {"step": "eval", "detail": ""}
        }));
        let s = m.summary;
        assert_eq!(s.len(), 2);
        assert_eq!(s["gold_reward"], 0.5);
        let ser = m.series;
        assert_eq!(ser["rm_loss"], vec![(0.0, 0.7), (1.0, 0.6)]);
        assert!(ser["empty"].is_empty());
        assert_eq!(file_stem("a/b c.svg"), "a_b_c_svg");
        assert_eq!(file_stem(""), "_");
    }
}
