//! Small SVG charts for step outputs (histograms, curves). SVG needs no fonts installed.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::StepError;

fn err(path: &Path) -> impl Fn(String) -> StepError + '_ {
    move |e| StepError::new(format!("cannot draw {}: {e}", path.display()))
}

/// The smallest box (x0, x1, y0, y1) holding every point; the unit box when there are none.
fn bounds<'a>(points: impl Iterator<Item = &'a (f64, f64)>) -> (f64, f64, f64, f64) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    (x0, x1, y0, y1)
}

/// A bar chart of `bars` (label, count), e.g. a length histogram or base composition.
pub fn bars(
    path: &Path,
    title: &str,
    x_label: &str,
    bars: &[(String, f64)],
) -> Result<(), StepError> {
    let e = err(path);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let top = bars.iter().map(|b| b.1).fold(0.0_f64, f64::max).max(1.0) * 1.05;
    let labels: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((0..bars.len()).into_segmented(), 0.0..top)
        .map_err(|x| e(x.to_string()))?;
    let step = (labels.len() / 12).max(1);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(x_label)
        .y_desc("count")
        .x_labels(labels.len().min(24))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if i % step == 0 => {
                labels.get(*i).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .draw()
        .map_err(|x| e(x.to_string()))?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .style(RGBColor(52, 101, 164).filled())
                .margin(2)
                .data(bars.iter().enumerate().map(|(i, b)| (i, b.1))),
        )
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Lines through points, one series per (name, points); for loss curves and the like.
pub fn lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
) -> Result<(), StepError> {
    let e = err(path);
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let (x0, x1, y0, y1) = bounds(series.iter().flat_map(|s| s.1.iter()));
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    let colors = [
        RGBColor(52, 101, 164),
        RGBColor(204, 0, 0),
        RGBColor(78, 154, 6),
        RGBColor(117, 80, 123),
    ];
    for (k, (name, points)) in series.iter().enumerate() {
        let color = colors[k % colors.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|x| e(x.to_string()))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|x| e(x.to_string()))?;
    }
    root.present().map_err(|x| e(x.to_string()))
}

/// A confusion matrix as a heat map: one row per true class, one column per predicted class,
/// each cell shaded by its share of the row (so a rare class reads as clearly as a common one)
/// and labelled with its count.
pub fn confusion(
    path: &Path,
    title: &str,
    labels: &[String],
    counts: &[Vec<u64>],
) -> Result<(), StepError> {
    let e = err(path);
    let k = labels.len().max(1) as i32;
    let cell = (560 / k).clamp(12, 96);
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(1) as i32;
    let label_px = (longest * 8).clamp(16, 200);
    // Column labels turn vertical when they do not fit under their cell.
    let vertical = label_px + 8 > cell;
    let (left, top) = (label_px + 48, 56);
    let bottom = if vertical { label_px + 48 } else { 56 };
    let (w, h) = (left + k * cell + 24, top + k * cell + bottom);
    let root = SVGBackend::new(path, (w.max(360) as u32, h as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let centered = |size: i32| {
        TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(HPos::Center, VPos::Center))
    };
    let draw_text = |text: &str, at: (i32, i32), style: TextStyle| {
        root.draw(&Text::new(text.to_string(), at, style))
            .map_err(|x| e(x.to_string()))
    };
    draw_text(title, (w.max(360) / 2, 24), centered(24))?;
    let font = (cell / 3).clamp(11, 20);
    for (i, row) in counts.iter().enumerate() {
        let total: u64 = row.iter().sum();
        for (j, &c) in row.iter().enumerate() {
            let share = if total > 0 {
                c as f64 / total as f64
            } else {
                0.0
            };
            let mix = |full: u8| (255.0 - share * (255.0 - full as f64)).round() as u8;
            let fill = RGBColor(mix(52), mix(101), mix(164));
            let (x0, y0) = (left + j as i32 * cell, top + i as i32 * cell);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                fill.filled(),
            ))
            .map_err(|x| e(x.to_string()))?;
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + cell)],
                RGBColor(200, 200, 200).stroke_width(1),
            ))
            .map_err(|x| e(x.to_string()))?;
            if cell >= 24 {
                let ink = if share > 0.5 { WHITE } else { BLACK };
                let style = centered(font).color(&ink);
                draw_text(&c.to_string(), (x0 + cell / 2, y0 + cell / 2), style)?;
            }
        }
    }
    let axis = font.min(17);
    for (i, label) in labels.iter().enumerate() {
        let mid = i as i32 * cell + cell / 2;
        let right = TextStyle::from(("sans-serif", axis).into_font())
            .pos(Pos::new(HPos::Right, VPos::Center));
        draw_text(label, (left - 6, top + mid), right)?;
        let under = top + k * cell + 6;
        if vertical {
            let style = TextStyle::from(("sans-serif", axis).into_font())
                .pos(Pos::new(HPos::Right, VPos::Center))
                .transform(FontTransform::Rotate270);
            draw_text(label, (left + mid, under), style)?;
        } else {
            let style = TextStyle::from(("sans-serif", axis).into_font())
                .pos(Pos::new(HPos::Center, VPos::Top));
            draw_text(label, (left + mid, under), style)?;
        }
    }
    draw_text("predicted", (left + k * cell / 2, h - 16), centered(18))?;
    let side = centered(18).transform(FontTransform::Rotate270);
    draw_text("true", (14, top + k * cell / 2), side)?;
    root.present().map_err(|x| e(x.to_string()))
}

/// Points coloured by group, with a legend: an embedding projection coloured by label.
pub fn scatter(
    path: &Path,
    title: &str,
    axes: (&str, &str),
    groups: &[(String, Vec<(f64, f64)>)],
) -> Result<(), StepError> {
    let e = err(path);
    let root = SVGBackend::new(path, (800, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let (x0, x1, y0, y1) = bounds(groups.iter().flat_map(|g| g.1.iter()));
    let (px, py) = (((x1 - x0) * 0.05).max(1e-9), ((y1 - y0) * 0.05).max(1e-9));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((x0 - px)..(x1 + px), (y0 - py)..(y1 + py))
        .map_err(|x| e(x.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(axes.0)
        .y_desc(axes.1)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    for (k, (name, points)) in groups.iter().enumerate() {
        let color = Palette99::pick(k).mix(0.7);
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(|x| e(x.to_string()))?
            .label(name.as_str())
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|x| e(x.to_string()))?;
    root.present().map_err(|x| e(x.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_svg_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("h.svg");
        bars(
            &p,
            "Lengths",
            "bases",
            &[("60".into(), 10.0), ("61".into(), 3.0)],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("Lengths"));
        let p = d.path().join("l.svg");
        lines(
            &p,
            "Loss",
            "step",
            "loss",
            &[
                ("train", vec![(0.0, 2.0), (1.0, 1.5)]),
                ("valid", vec![(1.0, 1.7)]),
            ],
        )
        .unwrap();
        assert!(std::fs::read_to_string(&p).unwrap().contains("valid"));
        let p = d.path().join("c.svg");
        let labels = ["acceptor".to_string(), "donor".into(), "neither".into()];
        confusion(
            &p,
            "Confusion",
            &labels,
            &[vec![5, 1, 0], vec![0, 3, 2], vec![1, 0, 9]],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("neither") && svg.contains("\n9\n"));
    }
}

/// A grid of signed values (rows: letters, columns: consecutive positions), for in-silico
/// mutagenesis: blue above zero, red below, white at zero, scaled by the largest magnitude;
/// NaN cells (a letter's own position) grey; named regions bracketed above the columns.
#[derive(Debug, Clone)]
pub struct Heatmap {
    pub title: String,
    pub rows: Vec<String>,
    /// The coordinate of the first column.
    pub first_column: i64,
    /// `values[row][column]`.
    pub values: Vec<Vec<f64>>,
    /// (name, first, last) in column coordinates, inclusive.
    pub marks: Vec<(String, i64, i64)>,
}

/// Draw `h` as an SVG heat map with a colour key.
pub fn heatmap(path: &Path, h: &Heatmap) -> Result<(), StepError> {
    let e = err(path);
    let columns = h.values.first().map_or(0, Vec::len) as i32;
    let rows = h.rows.len() as i32;
    let cell = (1100 / columns.max(1)).clamp(6, 28);
    let row_h = (360 / rows.max(1)).clamp(10, 28);
    let (left, top) = (48, 96);
    let w = (left + columns * cell + 140).max(480);
    let hgt = top + rows * row_h + 64;
    let root = SVGBackend::new(path, (w as u32, hgt as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(x.to_string()))?;
    let style = |size: i32, h: HPos, v: VPos| {
        TextStyle::from(("sans-serif", size).into_font()).pos(Pos::new(h, v))
    };
    let text = |t: &str, at: (i32, i32), s: TextStyle| {
        root.draw(&Text::new(t.to_string(), at, s))
            .map_err(|x| e(x.to_string()))
    };
    text(&h.title, (w / 2, 20), style(20, HPos::Center, VPos::Center))?;
    let scale = h
        .values
        .iter()
        .flatten()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, |m, v| m.max(v.abs()))
        .max(1e-12);
    let colour = |v: f64| {
        if !v.is_finite() {
            return RGBColor(210, 210, 210);
        }
        let s = (v / scale).clamp(-1.0, 1.0);
        let mix = |full: u8, share: f64| (255.0 - share * (255.0 - full as f64)).round() as u8;
        if s >= 0.0 {
            RGBColor(mix(33, s), mix(102, s), mix(172, s))
        } else {
            RGBColor(mix(178, -s), mix(24, -s), mix(43, -s))
        }
    };
    for (r, row) in h.values.iter().enumerate() {
        for (c, &v) in row.iter().enumerate() {
            let (x0, y0) = (left + c as i32 * cell, top + r as i32 * row_h);
            root.draw(&Rectangle::new(
                [(x0, y0), (x0 + cell, y0 + row_h)],
                colour(v).filled(),
            ))
            .map_err(|x| e(x.to_string()))?;
        }
        let mid = top + r as i32 * row_h + row_h / 2;
        text(
            &h.rows[r],
            (left - 8, mid),
            style(14, HPos::Right, VPos::Center),
        )?;
    }
    // Position labels under every 5th (or 10th) column.
    let every = if cell >= 12 { 5 } else { 10 };
    for c in 0..columns {
        let pos = h.first_column + c as i64;
        if pos % every == 0 {
            let x = left + c * cell + cell / 2;
            text(
                &pos.to_string(),
                (x, top + rows * row_h + 6),
                style(12, HPos::Center, VPos::Top),
            )?;
        }
    }
    text(
        "position",
        (left + columns * cell / 2, hgt - 14),
        style(14, HPos::Center, VPos::Center),
    )?;
    for (name, a, b) in &h.marks {
        let c0 = (a - h.first_column).clamp(0, columns as i64) as i32;
        let c1 = (b - h.first_column + 1).clamp(0, columns as i64) as i32;
        if c1 <= c0 {
            continue;
        }
        let (x0, x1, y) = (left + c0 * cell, left + c1 * cell, top - 10);
        root.draw(&PathElement::new(
            vec![(x0, y + 6), (x0, y), (x1, y), (x1, y + 6)],
            BLACK.stroke_width(2),
        ))
        .map_err(|x| e(x.to_string()))?;
        text(
            name,
            ((x0 + x1) / 2, y - 4),
            style(13, HPos::Center, VPos::Bottom),
        )?;
    }
    // Colour key: −scale … +scale.
    let kx = left + columns * cell + 28;
    let steps = 20;
    for i in 0..steps {
        let v = scale * (1.0 - 2.0 * i as f64 / (steps - 1) as f64);
        let y = top + i * 8;
        root.draw(&Rectangle::new(
            [(kx, y), (kx + 16, y + 8)],
            colour(v).filled(),
        ))
        .map_err(|x| e(x.to_string()))?;
    }
    text(
        &format!("{scale:+.3}"),
        (kx + 20, top),
        style(12, HPos::Left, VPos::Center),
    )?;
    text(
        &format!("{:+.3}", -scale),
        (kx + 20, top + steps * 8),
        style(12, HPos::Left, VPos::Center),
    )?;
    root.present().map_err(|x| e(x.to_string()))
}
