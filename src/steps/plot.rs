//! Small SVG charts for step outputs (histograms, curves). SVG needs no fonts installed.

use std::path::Path;

use plotters::prelude::*;

use super::StepError;

fn err(path: &Path) -> impl Fn(String) -> StepError + '_ {
    move |e| StepError::new(format!("cannot draw {}: {e}", path.display()))
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
    let pts = series.iter().flat_map(|s| s.1.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
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
    }
}
