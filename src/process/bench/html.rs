//! `--html FILE`: one self-contained page (no external scripts, styles or fonts) with the report
//! table and charts drawn as inline SVG by `plotters`: latency and TTFT CDFs, the ITL
//! distribution, throughput and latency over time, and for a sweep, latency and goodput against
//! the offered rate. A few lines of inline script mark the page once the charts are laid out
//! (`<body data-charts="N">`), which the headless-browser test reads.

use std::path::Path;

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::{Run, Sample};

const SIZE: (u32, u32) = (760, 340);
/// Most points a line or scatter chart draws (the CDFs are resampled, scatters thinned).
const POINTS: usize = 600;

pub fn write(path: &Path, run: &Run) -> Result<(), String> {
    std::fs::write(path, page(run)?).map_err(|e| format!("--html {}: {e}", path.display()))
}

pub fn page(run: &Run) -> Result<String, String> {
    let samples: Vec<&Sample> = run.samples.iter().filter(|s| s.step == run.step).collect();
    let mut charts = Vec::new();
    let e2e: Vec<f64> = samples.iter().map(|s| s.e2e_ms).collect();
    charts.push(cdf("End-to-end latency (CDF)", "latency, ms", &[("e2e", e2e)])?);
    let ttft: Vec<f64> = samples.iter().filter_map(|s| s.ttft_ms).collect();
    if !ttft.is_empty() {
        charts.push(cdf("Time to first token (CDF)", "TTFT, ms", &[("ttft", ttft)])?);
    }
    let gaps: Vec<f64> = samples.iter().flat_map(|s| s.gaps.iter().map(|g| f64::from(*g))).collect();
    let per_token: Vec<f64> = samples.iter().filter_map(|s| s.itl_ms).collect();
    if !gaps.is_empty() {
        charts.push(histogram("Inter-token latency: gaps between content events", "ms", &gaps)?);
    }
    if !per_token.is_empty() {
        charts.push(histogram("Inter-token latency per output token, by request", "ms / token", &per_token)?);
    }
    charts.push(over_time(&samples, false)?);
    if samples.iter().any(|s| s.output_tokens.is_some()) {
        charts.push(over_time(&samples, true)?);
    }
    charts.push(latency_over_time(&samples)?);
    if let Some(sweep) = &run.report.sweep {
        charts.push(sweep_chart(sweep, true)?);
        charts.push(sweep_chart(sweep, false)?);
    }
    let figures: String = charts
        .iter()
        .map(|(title, svg)| format!("<figure><figcaption>{}</figcaption>{svg}</figure>\n", escape(title)))
        .collect();
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>tollgate bench: {target}</title>\n\
         <style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}pre{{background:#f6f6f6;padding:1em;overflow:auto}}\
         figure{{margin:1.5em 0}}figcaption{{font-weight:600;margin-bottom:.3em}}</style></head>\n\
         <body data-charts=\"0\">\n<h1>tollgate bench</h1>\n<pre>{table}</pre>\n{figures}\
         <script>\nconst drawn = [...document.querySelectorAll('figure svg')].filter(s => s.getBoundingClientRect().width > 0 && s.querySelectorAll('*').length > 10);\n\
         document.body.dataset.charts = String(drawn.length);\n</script>\n</body></html>\n",
        target = escape(&run.report.target),
        table = escape(&run.report.table()),
    ))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

type Chart = (String, String);

fn failed(e: impl std::fmt::Display) -> String {
    format!("drawing a chart: {e}")
}

/// Draws into an SVG string with a white background.
fn svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(failed)?;
        draw(&root)?;
        root.present().map_err(failed)?;
    }
    Ok(out)
}

type Axes<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A chart from 0 to `x_max` and `y_max`, with its grid and the axes' labels.
fn axes<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    (x_max, y_max): (f64, f64),
    (x_label, y_label): (&str, &str),
) -> Result<Axes<'a, 'b>, String> {
    let mut chart = ChartBuilder::on(root)
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(failed)?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(failed)?;
    Ok(chart)
}

fn upper(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0, f64::max);
    if max > 0.0 { max * 1.05 } else { 1.0 }
}

const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];

fn cdf(title: &str, x_label: &str, series: &[(&str, Vec<f64>)]) -> Result<Chart, String> {
    let lines: Vec<(&str, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, values)| {
            let mut sorted = values.clone();
            sorted.sort_unstable_by(f64::total_cmp);
            let n = sorted.len().max(1);
            let step = n.div_ceil(POINTS).max(1);
            let mut points: Vec<(f64, f64)> =
                sorted.iter().enumerate().step_by(step).map(|(i, v)| (*v, (i + 1) as f64 / n as f64)).collect();
            if let Some(last) = sorted.last() {
                points.push((*last, 1.0));
            }
            (*name, points)
        })
        .collect();
    let x_max = upper(lines.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)));
    let svg = svg(|root| {
        let mut chart = axes(root, (x_max, 1f64), (x_label, "share of requests"))?;
        for (i, (name, points)) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(failed)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(failed)?;
        Ok(())
    })?;
    Ok((title.to_owned(), svg))
}

fn histogram(title: &str, x_label: &str, values: &[f64]) -> Result<Chart, String> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    // Up to the 99.5th percentile, so one stall does not squeeze every bar into the first.
    let top = super::stats::quantile(&sorted, 0.995).max(1e-3) * 1.05;
    let bins = 60;
    let width = top / f64::from(bins);
    let mut counts = vec![0u64; bins as usize];
    for v in &sorted {
        counts[((v / width) as usize).min(bins as usize - 1)] += 1;
    }
    let y_max = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.05;
    let svg = svg(|root| {
        let mut chart = axes(root, (top, y_max), (x_label, "count"))?;
        chart
            .draw_series(counts.iter().enumerate().map(|(i, c)| {
                let x0 = i as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, *c as f64)], COLOURS[0].filled())
            }))
            .map_err(failed)?;
        Ok(())
    })?;
    Ok((format!("{title} (to p99.5; {} values)", values.len()), svg))
}

/// Requests (`tokens == false`) or output tokens finished per second, over the run.
fn over_time(samples: &[&Sample], tokens: bool) -> Result<Chart, String> {
    let end = samples.iter().map(|s| s.finished()).fold(0.0, f64::max).max(1e-3);
    // Whole seconds from 10 s on (at most 100 bins), else tenths of the run.
    let bin = if end > 100.0 {
        end / 100.0
    } else if end >= 10.0 {
        1.0
    } else {
        end / 10.0
    };
    let bins = (end / bin).ceil() as usize;
    let mut per_bin = vec![0.0; bins.max(1)];
    for s in samples {
        let i = ((s.finished() / bin) as usize).min(per_bin.len() - 1);
        per_bin[i] += if tokens { s.output_tokens.unwrap_or(0) as f64 } else { 1.0 } / bin;
    }
    let y_max = upper(per_bin.iter().copied());
    let (what, colour) = if tokens { ("output tokens/s", COLOURS[1]) } else { ("requests/s", COLOURS[0]) };
    let svg = svg(|root| {
        let mut chart = axes(root, (end, y_max), ("seconds from the start", what))?;
        // A step line: each bin's rate across the bin.
        let points = per_bin.iter().enumerate().flat_map(|(j, v)| [(j as f64 * bin, *v), ((j + 1) as f64 * bin, *v)]);
        chart.draw_series(LineSeries::new(points, colour.stroke_width(2))).map_err(failed)?;
        Ok(())
    })?;
    let title = if tokens { "Output tokens per second over time" } else { "Requests finished per second over time" };
    Ok((format!("{title} ({bin:.2} s bins)"), svg))
}

/// Each request's latency (and TTFT) at its scheduled start.
fn latency_over_time(samples: &[&Sample]) -> Result<Chart, String> {
    let step = samples.len().div_ceil(POINTS).max(1);
    let shown: Vec<&&Sample> = samples.iter().step_by(step).collect();
    let x_max = upper(shown.iter().map(|s| s.scheduled));
    let y_max = upper(shown.iter().map(|s| s.e2e_ms));
    let svg = svg(|root| {
        let mut chart = axes(root, (x_max, y_max), ("scheduled start, s", "ms"))?;
        chart
            .draw_series(shown.iter().map(|s| Circle::new((s.scheduled, s.e2e_ms), 2, COLOURS[0].filled())))
            .map_err(failed)?
            .label("latency")
            .legend(|(x, y)| Circle::new((x + 9, y), 3, COLOURS[0].filled()));
        chart
            .draw_series(
                shown.iter().filter_map(|s| s.ttft_ms.map(|t| Circle::new((s.scheduled, t), 2, COLOURS[1].filled()))),
            )
            .map_err(failed)?
            .label("ttft")
            .legend(|(x, y)| Circle::new((x + 9, y), 3, COLOURS[1].filled()));
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(failed)?;
        Ok(())
    })?;
    Ok((format!("Latency over time ({} of {} requests)", shown.len(), samples.len()), svg))
}

/// Latency (`latency == true`) or achieved and good throughput against the offered rate.
fn sweep_chart(sweep: &super::report::Sweep, latency: bool) -> Result<Chart, String> {
    let x_max = upper(sweep.steps.iter().map(|s| s.offered_per_second.max(s.value)));
    let series: Vec<(&str, Vec<(f64, f64)>)> = if latency {
        vec![
            ("p50 ms", sweep.steps.iter().map(|s| (s.offered_per_second, s.latency_p50_ms)).collect()),
            ("p99 ms", sweep.steps.iter().map(|s| (s.offered_per_second, s.latency_p99_ms)).collect()),
        ]
    } else {
        vec![
            ("achieved/s", sweep.steps.iter().map(|s| (s.offered_per_second, s.throughput_per_second)).collect()),
            ("goodput/s", sweep.steps.iter().map(|s| (s.offered_per_second, s.goodput_per_second)).collect()),
        ]
    };
    let y_max = upper(series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)));
    let svg = svg(|root| {
        let y = if latency { "ms" } else { "requests/s" };
        let mut chart = axes(root, (x_max, y_max), ("offered requests/s", y))?;
        for (i, (name, points)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))
                .map_err(failed)?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 3, colour.filled()))).map_err(failed)?;
        }
        chart.configure_series_labels().border_style(BLACK).background_style(WHITE).draw().map_err(failed)?;
        Ok(())
    })?;
    let title = if latency {
        "Sweep: latency against offered rate"
    } else {
        "Sweep: throughput and goodput against offered rate"
    };
    Ok((title.to_owned(), svg))
}
