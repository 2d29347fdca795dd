//! The loss picture of a run: train and eval loss against the step, with the learning rate on
//! a second axis, drawn from `metrics.jsonl` into `loss.svg` at the end of every run and by
//! `temper plot RUN_DIR`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

pub const FILE: &str = "loss.svg";

/// The series of a run, one value per step (a resumed run's repeated steps keep the last).
#[derive(Default)]
pub struct Series {
    pub loss: BTreeMap<u64, f64>,
    pub lr: BTreeMap<u64, f64>,
    pub eval_loss: BTreeMap<u64, f64>,
}

/// Reads `metrics.jsonl` of a run folder.
pub fn read(run_dir: &Path) -> Result<Series> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (a run folder is the output_dir of `temper train`)",
            path.display()
        )
    })?;
    let mut s = Series::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a JSON line", path.display(), i + 1))?;
        let Some(step) = v.get("step").and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let num = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        if let Some(l) = num("loss") {
            s.loss.insert(step, l);
        }
        if let Some(l) = num("lr") {
            s.lr.insert(step, l);
        }
        if let Some(l) = num("eval_loss") {
            s.eval_loss.insert(step, l);
        }
    }
    Ok(s)
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    if !lo.is_finite() {
        return None;
    }
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
    Some((lo - pad, hi + pad))
}

/// Draws `series` into `out` (SVG).
pub fn draw(series: &Series, title: &str, out: &Path) -> Result<()> {
    let Some((lo, hi)) = range(
        series
            .loss
            .values()
            .chain(series.eval_loss.values())
            .copied(),
    ) else {
        bail!("no losses to draw in {}", out.display());
    };
    let last = series
        .loss
        .keys()
        .chain(series.eval_loss.keys())
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let (lr_lo, lr_hi) = range(series.lr.values().copied()).unwrap_or((0.0, 1.0));
    let lr_lo = lr_lo.min(0.0);
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", out.display());
    let root = SVGBackend::new(out, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0u64..last, lo..hi)
        .map_err(|e| err(&e))?
        .set_secondary_coord(0u64..last, lr_lo..lr_hi);
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .configure_secondary_axes()
        .y_desc("learning rate")
        .y_label_formatter(&|v| format!("{v:.1e}"))
        .draw()
        .map_err(|e| err(&e))?;
    let blue = RGBColor(31, 119, 180);
    let orange = RGBColor(255, 127, 14);
    let grey = RGBColor(150, 150, 150);
    chart
        .draw_series(LineSeries::new(
            series.loss.iter().map(|(&s, &l)| (s, l)),
            blue.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("train loss")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], blue.stroke_width(2)));
    if !series.eval_loss.is_empty() {
        chart
            .draw_series(LineSeries::new(
                series.eval_loss.iter().map(|(&s, &l)| (s, l)),
                orange.stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label("eval loss")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], orange.stroke_width(2))
            });
        chart
            .draw_series(
                series
                    .eval_loss
                    .iter()
                    .map(|(&s, &l)| Circle::new((s, l), 3, orange.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    if !series.lr.is_empty() {
        chart
            .draw_secondary_series(LineSeries::new(
                series.lr.iter().map(|(&s, &l)| (s, l)),
                grey.stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("learning rate (right axis)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], grey));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Redraws `run_dir/loss.svg` from its metrics; returns the picture's path.
pub fn redraw(run_dir: &Path) -> Result<PathBuf> {
    let series = read(run_dir)?;
    let out = run_dir.join(FILE);
    let name = std::fs::canonicalize(run_dir)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_else(|| run_dir.display().to_string());
    draw(&series, &format!("temper: {name}"), &out)?;
    Ok(out)
}
