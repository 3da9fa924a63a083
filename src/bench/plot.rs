//! `--plot FILE.svg`: the bench's two figures as one picture a learner can open or put in a
//! report. Left, messages per second; right, the server's CPU time per message; both
//! against the number of connections, one line per mode (dashed with idle connections),
//! and the legend in a strip of its own below.
//!
//! plotters draws it with its SVG backend only: no system library, no font file (the text
//! is left to whatever shows the SVG).

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::Row;

const SIZE: (u32, u32) = (1280, 620);

/// Legend entries per row, under the panels.
const LEGEND_COLUMNS: usize = 4;
const FONT: &str = "sans-serif";

/// One line of the chart: a server with a given number of idle connections.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    /// (connections, msgs/s) and (connections, µs CPU per message).
    rate: Vec<(f64, f64)>,
    cost: Vec<(f64, f64)>,
}

pub fn draw(path: &Path, rows: &[Row], size: usize) -> Result<()> {
    let lines = lines(rows);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let title = format!(
        "tcp-lab bench: one echo server per mode, {size}-byte messages, one in flight per connection"
    );
    let root = root.titled(&title, (FONT, 24)).map_err(err)?;
    // The legend gets a strip of its own under both panels, so it never hides a point.
    let rows_of_legend = lines.len().div_ceil(LEGEND_COLUMNS) as u32;
    let legend_height = 20 + 24 * rows_of_legend;
    let (charts, legend_area) = root.split_vertically(SIZE.1 - 40 - legend_height);
    let (left, right) = charts.split_horizontally(SIZE.0 / 2);
    panel(
        &left,
        &lines,
        "Throughput: messages per second (higher is better)",
        "messages per second",
        false,
        |l| &l.rate,
    )?;
    panel(
        &right,
        &lines,
        "Cost: server CPU time per message (lower is better)",
        "µs of server CPU per message (log scale)",
        true,
        |l| &l.cost,
    )?;
    legend(&legend_area, &lines)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One half of the picture: `points` of every line against the connection count.
fn panel(
    area: &DrawingArea<SVGBackend, Shift>,
    lines: &[Line],
    caption: &str,
    y_desc: &str,
    log_y: bool,
    points: fn(&Line) -> &Vec<(f64, f64)>,
) -> Result<()> {
    let all = || lines.iter().flat_map(|l| points(l).iter().copied());
    let x_max = all().map(|p| p.0).fold(1.0, f64::max) * 1.5;
    let highest = all().map(|p| p.1).fold(0.0, f64::max).max(1.0);
    let lowest = all().map(|p| p.1).fold(f64::MAX, f64::min).max(0.01);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, (FONT, 18))
        .margin(18)
        .x_label_area_size(50)
        .y_label_area_size(80);
    let x_range = (0.7f64..x_max).log_scale();
    if log_y {
        let mut chart = builder
            .build_cartesian_2d(x_range, (lowest * 0.6..highest * 1.6).log_scale())
            .map_err(err)?;
        mesh(&mut chart, y_desc, |y| format_number(*y))?;
        series(&mut chart, lines, points)?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_range, 0.0..highest * 1.1)
            .map_err(err)?;
        mesh(&mut chart, y_desc, |y| format_number(*y))?;
        series(&mut chart, lines, points)?;
    }
    Ok(())
}

type Chart<'a, Y> = ChartContext<'a, SVGBackend<'a>, Cartesian2d<LogCoord<f64>, Y>>;

fn mesh<'a, Y>(chart: &mut Chart<'a, Y>, y_desc: &str, y_fmt: fn(&f64) -> String) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc("connections, each with one message in flight (log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format_number(*x))
        .y_labels(12)
        .y_label_formatter(&y_fmt)
        .label_style((FONT, 14))
        .bold_line_style(BLACK.mix(0.15))
        .light_line_style(BLACK.mix(0.03))
        .axis_desc_style((FONT, 15))
        .draw()
        .map_err(err)
}

fn series<'a, Y>(
    chart: &mut Chart<'a, Y>,
    lines: &[Line],
    points: fn(&Line) -> &Vec<(f64, f64)>,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    for line in lines {
        let data = points(line).clone();
        if data.is_empty() {
            continue;
        }
        let color = line.color;
        let style = color.stroke_width(2);
        let drawn = if line.dashed {
            chart.draw_series(DashedLineSeries::new(data.clone(), 8, 5, style))
        } else {
            chart.draw_series(LineSeries::new(data.clone(), style))
        };
        drawn.map_err(err)?;
        chart
            .draw_series(data.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(err)?;
    }
    Ok(())
}

/// Each line's colour and dash beside its name, in rows of LEGEND_COLUMNS.
fn legend(area: &DrawingArea<SVGBackend, Shift>, lines: &[Line]) -> Result<()> {
    let column = (SIZE.0 as i32 - 80) / LEGEND_COLUMNS as i32;
    for (i, line) in lines.iter().enumerate() {
        let x = 60 + column * (i % LEGEND_COLUMNS) as i32;
        let y = 14 + 24 * (i / LEGEND_COLUMNS) as i32;
        let style = line.color.stroke_width(3);
        let sample = vec![(x, y), (x + 32, y)];
        if line.dashed {
            area.draw(&DashedPathElement::new(sample, 8, 5, style))
        } else {
            area.draw(&PathElement::new(sample, style))
        }
        .map_err(err)?;
        area.draw(&Circle::new((x + 16, y), 4, line.color.filled()))
            .map_err(err)?;
        // A server that answered nobody has no point to draw: the legend says why.
        let label = if line.rate.is_empty() {
            format!("{} (none served)", line.label)
        } else {
            line.label.clone()
        };
        let text = Text::new(label, (x + 40, y - 8), (FONT, 15));
        area.draw(&text).map_err(err)?;
    }
    Ok(())
}

/// The rows grouped into lines, one per server and idle count, in the order they ran.
fn lines(rows: &[Row]) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    for row in rows {
        let label = if row.idle > 0 {
            format!("{}, {} idle", row.mode, row.idle)
        } else {
            row.mode.clone()
        };
        let at = match lines.iter().position(|l| l.label == label) {
            Some(at) => at,
            None => {
                lines.push(Line {
                    label,
                    color: color_of(&row.mode),
                    dashed: row.idle > 0,
                    rate: Vec::new(),
                    cost: Vec::new(),
                });
                lines.len() - 1
            }
        };
        let x = row.conns.max(1) as f64;
        if row.msgs > 0 {
            lines[at].rate.push((x, row.msgs_per_s));
        }
        if let Some(cost) = row.cpu_us_per_msg {
            lines[at].cost.push((x, cost));
        }
    }
    lines
}

/// One colour per mode, the same in every picture.
fn color_of(mode: &str) -> RGBColor {
    match mode {
        "blocking" => RGBColor(0x7f, 0x7f, 0x7f),
        "threaded" => RGBColor(0x1f, 0x77, 0xb4),
        "process" => RGBColor(0xd6, 0x27, 0x28),
        "nonblocking" => RGBColor(0xff, 0x7f, 0x0e),
        "select" => RGBColor(0x94, 0x67, 0xbd),
        "poll" => RGBColor(0x2c, 0xa0, 0x2c),
        _ => RGBColor(0x17, 0xbe, 0xcf), // --against
    }
}

/// 1500 → "1.5k", 0.25 → "0.25": short tick labels.
fn format_number(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}
