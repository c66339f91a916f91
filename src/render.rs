//! Annotated images: each box drawn in a colour that encodes its OOD confidence on a
//! perceptually uniform scale (matplotlib's viridis), with a label and a small legend. Boxes
//! flagged OOD get a thicker, double outline and an "unknown?" label. Sizes scale with the
//! image, so labels stay readable from 64 px thumbnails to 4K frames.

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
    for a in order {
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
        let label = if a.flagged {
            format!("unknown? {}", a.label)
        } else {
            a.label.clone()
        };
        let (tw, th) = text_size(scale, &font, &label);
        let pad = (font_px / 5.0).round() as i32;
        let (bw, bh) = (tw as i32 + 2 * pad, th as i32 + 2 * pad);
        // Above the box when there is room, else inside its top; never beyond the image.
        let ly = if y1 - bh >= 0 {
            y1 - bh
        } else {
            (y1 + 1).min(h as i32 - bh).max(0)
        };
        let lx = x1.clamp(0, (w as i32 - bw).max(0));
        draw_filled_rect_mut(
            canvas,
            Rect::at(lx, ly).of_size(bw as u32, bh as u32),
            colour,
        );
        draw_text_mut(
            canvas,
            text_colour_on(colour),
            lx + pad,
            ly + pad,
            scale,
            &font,
            &label,
        );
    }
    if legend {
        draw_legend(canvas, &font, font_px);
    }
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
    fn labels_stay_inside_small_and_large_images() {
        for (w, h) in [(64, 48), (640, 480), (3840, 2160)] {
            let image = RgbImage::from_pixel(w, h, Rgb([128, 128, 128]));
            let boxes = vec![
                Annotation {
                    bbox: [0.0, 0.0, w as f32 * 0.3, h as f32 * 0.3],
                    label: "circle 0.91 · OOD 0.12".into(),
                    class_id: 0,
                    ood_confidence: Some(0.12),
                    flagged: false,
                },
                Annotation {
                    bbox: [w as f32 * 0.6, h as f32 * 0.7, w as f32, h as f32],
                    label: "star 0.88 · OOD 0.99".into(),
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
