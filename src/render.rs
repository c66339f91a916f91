//! Annotated images: each box drawn in a colour that encodes its OOD confidence on a
//! perceptually uniform scale (matplotlib's viridis), with a label and a small legend. Boxes
//! flagged OOD get a thicker, double outline and an "unknown?" label. Sizes scale with the
//! image, so labels stay readable from 64 px thumbnails to 4K frames. Labels are placed so
//! that none covers another, and drawn over every box outline.

use ab_glyph::{FontRef, PxScale};
use image::{Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut, draw_text_mut, text_size};
use imageproc::rect::Rect;

/// DejaVu Sans (Bitstream Vera licence, see assets/fonts/LICENSE-DejaVu.txt).
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

/// Viridis at 9 evenly spaced stops (matplotlib's published table); interpolated linearly.
const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// Class colours for detections without an OOD score (Okabe–Ito, distinguishable under the
/// common colour-vision deficiencies).
const CLASS_COLOURS: [[u8; 3]; 8] = [
    [0, 114, 178],
    [230, 159, 0],
    [0, 158, 115],
    [204, 121, 167],
    [86, 180, 233],
    [213, 94, 0],
    [240, 228, 66],
    [0, 0, 0],
];

/// The colour of an OOD confidence in [0, 1]: dark blue-violet (known) to yellow (unknown).
pub fn ood_colour(confidence: f64) -> Rgb<u8> {
    let t = confidence.clamp(0.0, 1.0) as f32 * (VIRIDIS.len() - 1) as f32;
    let i = (t.floor() as usize).min(VIRIDIS.len() - 2);
    let f = t - i as f32;
    let c = |k: usize| (VIRIDIS[i][k] * (1.0 - f) + VIRIDIS[i + 1][k] * f).round() as u8;
    Rgb([c(0), c(1), c(2)])
}

/// What to draw for one box.
pub struct Annotation {
    pub bbox: [f32; 4],
    pub label: String,
    pub class_id: usize,
    /// OOD confidence in [0, 1], when a scorer ran.
    pub ood_confidence: Option<f64>,
    pub flagged: bool,
}

/// The OOD part of a box label: "known (p=0.29)", or for a flagged box "p=0.01" (the label
/// then starts "unknown?"). The p-value, not `1 − p`: a known object's "OOD 0.71" read as
/// "71% unknown".
pub fn verdict_text(p_value: f64, flagged: bool) -> String {
    let p = if p_value >= 0.01 {
        format!("{p_value:.2}")
    } else if p_value >= 0.001 {
        format!("{p_value:.3}")
    } else {
        format!("{p_value:.0e}")
    };
    if flagged {
        format!("p={p}")
    } else {
        format!("known (p={p})")
    }
}

fn text_colour_on(background: Rgb<u8>) -> Rgb<u8> {
    let [r, g, b] = background.0.map(|v| v as f32);
    if 0.299 * r + 0.587 * g + 0.114 * b > 140.0 {
        Rgb([0, 0, 0])
    } else {
        Rgb([255, 255, 255])
    }
}

/// Draws the annotations on a copy of `image`; `legend` adds the colour scale.
pub fn annotate(image: &RgbImage, annotations: &[Annotation], legend: bool) -> RgbImage {
    // Very small images are drawn on an upscaled copy so that text stays legible.
    let short = image.width().min(image.height());
    let mut canvas = if short < 256 {
        let k = 256u32.div_ceil(short);
        image::imageops::resize(
            image,
            image.width() * k,
            image.height() * k,
            image::imageops::FilterType::Nearest,
        )
    } else {
        image.clone()
    };
    let zoom = canvas.width() as f32 / image.width() as f32;
    draw(&mut canvas, zoom, annotations, legend);
    canvas
}

/// Draws the annotations on `frame` itself, at its own size (video frames keep their size).
pub fn annotate_in_place(frame: &mut RgbImage, annotations: &[Annotation], legend: bool) {
    draw(frame, 1.0, annotations, legend);
}

/// Draws boxes whose coordinates are `zoom` times smaller than `canvas`'s pixels.
fn draw(canvas: &mut RgbImage, zoom: f32, annotations: &[Annotation], legend: bool) {
    let font = FontRef::try_from_slice(FONT).expect("the bundled font parses");
    let (w, h) = canvas.dimensions();
    let short = w.min(h) as f32;
    let font_px = (short / 38.0).clamp(11.0, 64.0);
    let thickness = ((short / 400.0).round() as i32).max(1);
    let scale = PxScale::from(font_px);

    // Flagged boxes are drawn last, so they stay on top.
    let mut order: Vec<&Annotation> = annotations.iter().collect();
    order.sort_by_key(|a| a.flagged);
    let pad = (font_px / 5.0).round() as i32;
    let mut labels = Vec::with_capacity(order.len());
    for a in &order {
        let colour = match a.ood_confidence {
            Some(c) => ood_colour(c),
            None => Rgb(CLASS_COLOURS[a.class_id % CLASS_COLOURS.len()]),
        };
        let [x1, y1, x2, y2] = a.bbox.map(|v| v * zoom);
        let (x1, y1) = (x1.round() as i32, y1.round() as i32);
        let (x2, y2) = (
            (x2.round() as i32).max(x1 + 1),
            (y2.round() as i32).max(y1 + 1),
        );
        let lines = if a.flagged {
            thickness * 2 + 1
        } else {
            thickness
        };
        for t in 0..lines {
            let rect = Rect::at(x1 - t, y1 - t)
                .of_size((x2 - x1 + 2 * t) as u32, (y2 - y1 + 2 * t) as u32);
            draw_hollow_rect_mut(canvas, rect, colour);
        }
        if a.flagged {
            // A contrasting inner line makes flagged boxes stand out on any background.
            let inner = Rect::at(x1 + 1, y1 + 1)
                .of_size((x2 - x1 - 2).max(1) as u32, (y2 - y1 - 2).max(1) as u32);
            draw_hollow_rect_mut(canvas, inner, text_colour_on(colour));
        }
        let text = if a.flagged {
            format!("unknown? {}", a.label)
        } else {
            a.label.clone()
        };
        let (tw, th) = text_size(scale, &font, &text);
        let size = (tw as i32 + 2 * pad, th as i32 + 2 * pad);
        labels.push(([x1, y1, x2, y2], size, text, colour));
    }
    // Flagged boxes choose their label's place first; labels go over every outline.
    let spots: Vec<_> = labels.iter().map(|(b, size, ..)| (*b, *size)).collect();
    let priority: Vec<usize> = (0..order.len()).rev().collect();
    let places = place_labels(&spots, &priority, (w as i32, h as i32));
    for ((_, (bw, bh), text, colour), (lx, ly)) in labels.iter().zip(places) {
        draw_filled_rect_mut(
            canvas,
            Rect::at(lx, ly).of_size(*bw as u32, *bh as u32),
            *colour,
        );
        draw_text_mut(
            canvas,
            text_colour_on(*colour),
            lx + pad,
            ly + pad,
            scale,
            &font,
            text,
        );
    }
    if legend {
        draw_legend(canvas, &font, font_px);
    }
}

/// Top-left corners for labels of the given sizes on boxes `[x1, y1, x2, y2]`, in an image of
/// `size`, chosen in `priority` order: above the box, inside its top, below it, inside its
/// bottom, then further above or below, one label height at a time; the first spot inside the
/// image that overlaps no label placed before wins. When none is free (a crowd of boxes), the
/// label goes above its box, or inside its top at the image's edge.
fn place_labels(
    labels: &[([i32; 4], (i32, i32))],
    priority: &[usize],
    (w, h): (i32, i32),
) -> Vec<(i32, i32)> {
    let mut places = vec![(0, 0); labels.len()];
    let mut taken: Vec<[i32; 4]> = Vec::with_capacity(labels.len());
    let overlaps =
        |a: &[i32; 4], b: &[i32; 4]| a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    for &i in priority {
        let ([x1, y1, _, y2], (bw, bh)) = labels[i];
        let x = x1.clamp(0, (w - bw).max(0));
        let fits = |y: i32| y >= 0 && y + bh <= h;
        let mut candidates = vec![y1 - bh, y1 + 1, y2 + 1, y2 - bh];
        for k in 1..=labels.len() as i32 {
            candidates.extend([y1 - bh * (k + 1), y2 + 1 + bh * k]);
        }
        let free = candidates.into_iter().filter(|&y| fits(y)).find(|&y| {
            let rect = [x, y, x + bw, y + bh];
            !taken.iter().any(|t| overlaps(t, &rect))
        });
        let y = free.unwrap_or(if y1 - bh >= 0 {
            y1 - bh
        } else {
            (y1 + 1).min(h - bh).max(0)
        });
        taken.push([x, y, x + bw, y + bh]);
        places[i] = (x, y);
    }
    places
}

/// A horizontal colour bar in the bottom-right corner: "known" on the left, "unknown" right.
fn draw_legend(canvas: &mut RgbImage, font: &FontRef, font_px: f32) {
    let (w, h) = canvas.dimensions();
    let scale = PxScale::from(font_px * 0.85);
    let pad = (font_px / 3.0) as i32;
    let bar_w = ((w as f32) * 0.25).clamp(60.0, 600.0) as i32;
    let bar_h = (font_px * 0.6).max(4.0) as i32;
    let (lw, lh) = text_size(scale, font, "known");
    let (uw, _) = text_size(scale, font, "unknown");
    let box_w = lw as i32 + bar_w + uw as i32 + 4 * pad;
    let box_h = (lh as i32).max(bar_h) + 2 * pad;
    let x0 = (w as i32 - box_w - pad).max(0);
    let y0 = (h as i32 - box_h - pad).max(0);
    draw_filled_rect_mut(
        canvas,
        Rect::at(x0, y0).of_size(box_w as u32, box_h as u32),
        Rgb([255, 255, 255]),
    );
    draw_text_mut(
        canvas,
        Rgb([0, 0, 0]),
        x0 + pad,
        y0 + pad,
        scale,
        font,
        "known",
    );
    let bx = x0 + 2 * pad + lw as i32;
    let by = y0 + (box_h - bar_h) / 2;
    for i in 0..bar_w {
        let c = ood_colour(i as f64 / (bar_w - 1).max(1) as f64);
        draw_filled_rect_mut(canvas, Rect::at(bx + i, by).of_size(1, bar_h as u32), c);
    }
    draw_text_mut(
        canvas,
        Rgb([0, 0, 0]),
        bx + bar_w + pad,
        y0 + pad,
        scale,
        font,
        "unknown",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_run_from_violet_to_yellow() {
        assert_eq!(ood_colour(0.0), Rgb([68, 1, 84]));
        assert_eq!(ood_colour(1.0), Rgb([253, 231, 37]));
        assert_eq!(ood_colour(2.0), ood_colour(1.0));
    }

    #[test]
    fn labels_of_overlapping_boxes_do_not_cover_each_other() {
        // Three boxes sharing a top-left corner, the case where every label went to one spot.
        let labels = [
            ([100, 100, 200, 200], (80, 20)),
            ([100, 100, 220, 180], (90, 20)),
            ([100, 100, 150, 300], (70, 20)),
        ];
        let places = place_labels(&labels, &[2, 1, 0], (640, 480));
        let rects: Vec<[i32; 4]> = labels
            .iter()
            .zip(&places)
            .map(|((_, (w, h)), &(x, y))| [x, y, x + w, y + h])
            .collect();
        for (i, a) in rects.iter().enumerate() {
            assert!(
                a[0] >= 0 && a[1] >= 0 && a[2] <= 640 && a[3] <= 480,
                "{a:?}"
            );
            for b in &rects[i + 1..] {
                let overlap = a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
                assert!(!overlap, "{rects:?}");
            }
        }
        // The first in priority keeps the usual place, above its box.
        assert_eq!(places[2], (100, 80));
    }

    #[test]
    fn verdicts_read_as_p_values() {
        assert_eq!(verdict_text(0.29, false), "known (p=0.29)");
        assert_eq!(verdict_text(0.004, true), "p=0.004");
        assert_eq!(verdict_text(0.0002, true), "p=2e-4");
    }

    #[test]
    fn labels_stay_inside_small_and_large_images() {
        for (w, h) in [(64, 48), (640, 480), (3840, 2160)] {
            let image = RgbImage::from_pixel(w, h, Rgb([128, 128, 128]));
            let boxes = vec![
                Annotation {
                    bbox: [0.0, 0.0, w as f32 * 0.3, h as f32 * 0.3],
                    label: "circle 0.91 · known (p=0.88)".into(),
                    class_id: 0,
                    ood_confidence: Some(0.12),
                    flagged: false,
                },
                Annotation {
                    bbox: [w as f32 * 0.6, h as f32 * 0.7, w as f32, h as f32],
                    label: "star 0.88 · p=0.01".into(),
                    class_id: 3,
                    ood_confidence: Some(0.99),
                    flagged: true,
                },
            ];
            let out = annotate(&image, &boxes, true);
            assert!(out.width() >= w && out.height() >= h);
            assert_ne!(
                out.as_raw(),
                image::imageops::resize(
                    &image,
                    out.width(),
                    out.height(),
                    image::imageops::FilterType::Nearest
                )
                .as_raw()
            );
        }
    }
}
