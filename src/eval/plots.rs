//! PNG plots for evaluation reports: ROC curves, ID/OOD score histograms and open-set
//! metrics.
//!
//! Drawn with `plotters` into an RGB buffer, encoded with the `image` crate the rest of the
//! crate already uses (so plotters' own encoder, which pulls an older `image`, is not needed),
//! and written atomically. Text uses the bundled DejaVu Sans (`assets/fonts`, Bitstream Vera
//! licence) so that plots look the same on every machine and need no system fonts.

use std::error::Error as StdError;
use std::path::Path;
use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::openset::OpenSetMetrics;
use crate::error::{Error, Result};

const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
const SIZE: (u32, u32) = (800, 600);
/// Curves are thinned to about this many points: a 1M-box ROC has up to 1M points, far more
/// than 800 pixels can show.
const MAX_CURVE_POINTS: usize = 4000;

type DrawResult = std::result::Result<(), Box<dyn StdError>>;

/// ROC curves, one line per `(name, points)`, with the chance diagonal. Points are `(fpr, tpr)`
/// as [`super::metrics::roc_curve`] gives them (ID positive), hence the axis labels.
pub fn roc_png(path: &Path, curves: &[(&str, Vec<(f64, f64)>)], title: &str) -> Result<()> {
    render(path, |area| draw_roc(area, curves, title))
}

/// Overlaid histograms of ID and OOD scores on shared bins, each normalised to unit area
/// (density), so sets of different sizes compare by shape. Non-finite scores are left out
/// (their count goes into the legend); empty sets are drawn as nothing.
pub fn histogram_png(
    path: &Path,
    id_scores: &[f64],
    ood_scores: &[f64],
    title: &str,
) -> Result<()> {
    render(path, |area| {
        draw_histogram(area, id_scores, ood_scores, title)
    })
}

/// The open-set metrics of each scorer as grouped bars, one group per metric: unknown recall,
/// unknown precision, AP of the unknown class, mAP of the known classes (all AP50) and
/// Wilderness Impact, each a fraction; AOSE, a count, is given in each scorer's legend entry.
/// A metric a scorer has no value for (no unknown objects) is left out.
pub fn open_set_png(path: &Path, scorers: &[(String, OpenSetMetrics)]) -> Result<()> {
    render(path, |area| draw_open_set(area, scorers))
}

/// The metrics drawn by [`open_set_png`], in the order of [`open_set_values`].
const OPEN_SET_NAMES: [&str; 5] = [
    "unknown recall",
    "unknown precision",
    "AP unknown",
    "mAP known",
    "WI",
];

fn open_set_values(m: &OpenSetMetrics) -> [Option<f64>; 5] {
    [
        m.unknown_recall,
        m.unknown_precision,
        m.ap_unknown,
        m.map_known,
        Some(m.wi),
    ]
}

fn draw_open_set(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    scorers: &[(String, OpenSetMetrics)],
) -> DrawResult {
    let groups = 5;
    let mut chart = ChartBuilder::on(area)
        .caption("Open-set metrics (IoU > 0.5)", ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..groups as f64, 0f64..1.15f64)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups * 2 + 1)
        .x_label_formatter(&|x| {
            let g = x.floor() as usize;
            let centred = (x - x.floor() - 0.5).abs() < 1e-9;
            match OPEN_SET_NAMES.get(g) {
                Some(name) if centred => name.to_string(),
                _ => String::new(),
            }
        })
        .y_desc("fraction")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()?;
    let width = 0.8 / scorers.len().max(1) as f64;
    for (k, (name, m)) in scorers.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars = open_set_values(m)
            .into_iter()
            .enumerate()
            .filter_map(|(g, v)| v.map(|v| (g, v)))
            .map(move |(g, v)| {
                let x = g as f64 + 0.1 + width * k as f64;
                Rectangle::new([(x, 0.0), (x + width, v)], color.filled())
            });
        chart
            .draw_series(bars)?
            .label(format!("{name} (AOSE {})", m.aose))
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], color.filled()));
    }
    if !scorers.is_empty() {
        legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    }
    Ok(())
}

/// Draws into an in-memory RGB buffer, then encodes it as PNG and writes it atomically.
fn render(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> DrawResult,
) -> Result<()> {
    let fail = |reason: String| Error::Plot {
        path: path.to_path_buf(),
        reason,
    };
    ensure_font().map_err(fail)?;
    let (w, h) = SIZE;
    let mut buf = vec![255u8; (w * h * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        area.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
        draw(&area).map_err(|e| fail(e.to_string()))?;
        area.present().map_err(|e| fail(e.to_string()))?;
    }
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(&buf, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| fail(e.to_string()))?;
    crate::core::write_atomically(path, &png)
}

/// Registers the bundled font as plotters' "sans-serif" once per process.
fn ensure_font() -> std::result::Result<(), String> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok =
        *REGISTERED.get_or_init(|| register_font("sans-serif", FontStyle::Normal, FONT).is_ok());
    ok.then_some(())
        .ok_or_else(|| "bundled font DejaVuSans.ttf does not parse".to_string())
}

fn draw_roc(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    curves: &[(&str, Vec<(f64, f64)>)],
    title: &str,
) -> DrawResult {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..1.0f64)?;
    chart
        .configure_mesh()
        .x_desc("FPR: fraction of OOD boxes accepted as ID")
        .y_desc("TPR: fraction of ID boxes accepted")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()?;
    chart.draw_series(DashedLineSeries::new(
        [(0.0, 0.0), (1.0, 1.0)],
        6,
        6,
        RGBColor(150, 150, 150).stroke_width(1),
    ))?;
    for (k, (name, points)) in curves.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        chart
            .draw_series(LineSeries::new(thin(points), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    if !curves.is_empty() {
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    plotters::coord::cartesian::Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::types::RangedCoordf64,
    >,
>;

/// The series labels in a framed box at `position`.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, position: SeriesLabelPosition) -> DrawResult {
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(position)
        .draw()?;
    Ok(())
}

/// Drops points closer than 1/1000 of the axes to the last kept one, always keeping the ends,
/// when there are more than [`MAX_CURVE_POINTS`]; the drawn curve moves by under a pixel.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if points.len() <= MAX_CURVE_POINTS {
        return points.to_vec();
    }
    let mut out = vec![points[0]];
    for (i, &p) in points.iter().enumerate().skip(1) {
        let last = out[out.len() - 1];
        if i == points.len() - 1 || (p.0 - last.0).abs() > 1e-3 || (p.1 - last.1).abs() > 1e-3 {
            out.push(p);
        }
    }
    out
}

/// Shared bins over the finite scores of both sets: `(lo, width, count)`. About √n bins,
/// between 10 and 80; a degenerate range is widened to unit width around its value.
fn bins(id: &[f64], ood: &[f64]) -> (f64, f64, usize) {
    let finite = id.iter().chain(ood).copied().filter(|s| s.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| {
        (lo.min(s), hi.max(s))
    });
    let n = id.len() + ood.len();
    let count = ((n as f64).sqrt().round() as usize).clamp(10, 80);
    if !lo.is_finite() {
        return (0.0, 1.0 / count as f64, count);
    }
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    (lo, (hi - lo) / count as f64, count)
}

/// Densities of the finite `scores` on the bins (each bin's count / (n · width)).
fn density(scores: &[f64], (lo, width, count): (f64, f64, usize)) -> Vec<f64> {
    let mut counts = vec![0usize; count];
    let mut n = 0usize;
    for &s in scores.iter().filter(|s| s.is_finite()) {
        // The top edge belongs to the last bin.
        let b = (((s - lo) / width) as usize).min(count - 1);
        counts[b] += 1;
        n += 1;
    }
    counts
        .iter()
        .map(|&c| {
            if n == 0 {
                0.0
            } else {
                c as f64 / (n as f64 * width)
            }
        })
        .collect()
}

fn draw_histogram(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    id: &[f64],
    ood: &[f64],
    title: &str,
) -> DrawResult {
    let spec = bins(id, ood);
    let (lo, width, count) = spec;
    let sets = [
        ("ID", id, density(id, spec), RGBColor(31, 119, 180)),
        ("OOD", ood, density(ood, spec), RGBColor(214, 39, 40)),
    ];
    let top = sets
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .fold(0.0f64, f64::max);
    let top = if top > 0.0 { top * 1.1 } else { 1.0 };
    let hi = lo + width * count as f64;

    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(lo..hi, 0f64..top)?;
    chart
        .configure_mesh()
        .x_desc("OOD score (higher = more OOD)")
        .y_desc("density")
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 17))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()?;
    for (name, scores, dens, color) in &sets {
        let color = *color;
        let edge = |b: usize| lo + width * b as f64;
        // Translucent bars so the two sets stay visible where they overlap, plus a step
        // outline in the full colour.
        chart.draw_series(dens.iter().enumerate().map(|(b, &d)| {
            Rectangle::new([(edge(b), 0.0), (edge(b + 1), d)], color.mix(0.3).filled())
        }))?;
        let outline = dens
            .iter()
            .enumerate()
            .flat_map(|(b, &d)| [(edge(b), d), (edge(b + 1), d)]);
        let outline = std::iter::once((lo, 0.0))
            .chain(outline)
            .chain(std::iter::once((hi, 0.0)));
        let dropped = scores.iter().filter(|s| !s.is_finite()).count();
        let label = match dropped {
            0 => format!("{name} (n = {})", scores.len()),
            d => format!("{name} (n = {}, {d} non-finite left out)", scores.len()),
        };
        chart
            .draw_series(LineSeries::new(outline, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 6), (x + 20, y + 6)], color.mix(0.6).filled())
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a written PNG and counts pixels that are not white.
    fn non_white_pixels(path: &Path) -> usize {
        let img = image::open(path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), SIZE);
        img.pixels().filter(|p| p.0 != [255, 255, 255]).count()
    }

    #[test]
    fn writes_decodable_non_blank_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let id: Vec<f64> = (0..500).map(|i| ((i * 37) % 100) as f64 / 50.0).collect();
        let ood: Vec<f64> = (0..300)
            .map(|i| 1.0 + ((i * 53) % 100) as f64 / 40.0)
            .chain([f64::INFINITY])
            .collect();

        let roc_path = dir.path().join("roc.png");
        let curves = [
            ("energy", super::super::roc_curve(&id, &ood)),
            ("msp", vec![(0.0, 0.0), (0.3, 0.7), (1.0, 1.0)]),
        ];
        roc_png(&roc_path, &curves, "ROC, ID positive").unwrap();
        assert!(non_white_pixels(&roc_path) > 5_000);

        let hist_path = dir.path().join("hist.png");
        histogram_png(&hist_path, &id, &ood, "Score histogram").unwrap();
        assert!(non_white_pixels(&hist_path) > 20_000);

        // Degenerate inputs still draw; only the two PNGs are left (no temporary files).
        histogram_png(&dir.path().join("flat.png"), &[1.0; 5], &[], "flat").unwrap();
        roc_png(&dir.path().join("empty.png"), &[], "no curves").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);

        let open_set = dir.path().join("open_set.png");
        let metrics = OpenSetMetrics {
            wi: 0.1,
            wi_recall_level: 0.8,
            aose: 3,
            unknown_recall: Some(0.6),
            unknown_precision: Some(0.8),
            ap_unknown: Some(0.4),
            map_known: Some(0.9),
            n_unknown_gt: 10,
            n_unknown_pred: 8,
            n_unknown_tp: 6,
        };
        open_set_png(&open_set, &[("energy".into(), metrics)]).unwrap();
        assert!(non_white_pixels(&open_set) > 20_000);
        std::fs::remove_file(&open_set).unwrap();

        // A path in a missing folder is an error, not a panic.
        assert!(roc_png(&dir.path().join("no/such/dir.png"), &curves, "x").is_err());

        if let Ok(keep) = std::env::var("OODBOX_KEEP_PLOTS") {
            for name in ["roc.png", "hist.png"] {
                std::fs::copy(dir.path().join(name), Path::new(&keep).join(name)).unwrap();
            }
        }
    }

    #[test]
    fn thinning_keeps_ends_and_shape() {
        let pts: Vec<(f64, f64)> = (0..=100_000)
            .map(|i| {
                let x = i as f64 / 100_000.0;
                (x, x.sqrt())
            })
            .collect();
        let t = thin(&pts);
        assert!(t.len() < 3_000, "{}", t.len());
        assert_eq!((t[0], t[t.len() - 1]), (pts[0], pts[pts.len() - 1]));
    }

    #[test]
    fn densities_integrate_to_one() {
        let id = [0.0, 0.1, 0.5, 1.0, f64::NAN];
        let spec = bins(&id, &[2.0]);
        let d = density(&id, spec);
        let area: f64 = d.iter().sum::<f64>() * spec.1;
        assert!((area - 1.0).abs() < 1e-12);
    }
}
