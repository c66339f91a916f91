//! ROI-align as torchvision's `roi_align(..., aligned=True)`: bilinear samples on a regular grid
//! in each of `k × k` bins, averaged per bin. Candle has no ROI-align; boxes are few, so this runs
//! on the CPU over a channels-last map (one tap reads a contiguous row of channels). Parity with
//! torchvision is tested against `tests/fixtures/roi_align/`.

/// A `(height, width, channels)` feature map, row-major (channels last).
pub struct FeatureMap<'a> {
    pub data: &'a [f32],
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// The bilinear taps (cell index, weight) of one sample point, torchvision's border rules:
/// nothing beyond one cell outside the map, clamped to the edge inside that margin.
fn taps(map: &FeatureMap, y: f32, x: f32) -> Option<[(usize, f32); 4]> {
    let (h, w) = (map.height as f32, map.width as f32);
    if y < -1.0 || y > h || x < -1.0 || x > w {
        return None;
    }
    let (mut y, mut x) = (y.max(0.0), x.max(0.0));
    let (mut y0, mut x0) = (y as usize, x as usize);
    let (y1, x1);
    if y0 >= map.height - 1 {
        y0 = map.height - 1;
        y1 = y0;
        y = y0 as f32;
    } else {
        y1 = y0 + 1;
    }
    if x0 >= map.width - 1 {
        x0 = map.width - 1;
        x1 = x0;
        x = x0 as f32;
    } else {
        x1 = x0 + 1;
    }
    let (ly, lx) = (y - y0 as f32, x - x0 as f32);
    let (hy, hx) = (1.0 - ly, 1.0 - lx);
    let at = |r: usize, c: usize| r * map.width + c;
    Some([
        (at(y0, x0), hy * hx),
        (at(y0, x1), hy * lx),
        (at(y1, x0), ly * hx),
        (at(y1, x1), ly * lx),
    ])
}

/// How many sample points per bin side.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// `ceil(roi side / bins)` per side, as torchvision's `sampling_ratio=-1` (and detectron2's
    /// 0): about one point per map cell, so a 1×1 bin averages the whole box.
    Adaptive,
    Fixed(usize),
}

/// `map` ROI-aligned on `bbox` (x1, y1, x2, y2 in the input pixels of a map of `stride`):
/// `channels · bins · bins` values, channel-major (torchvision's `(C, k, k)` flattened).
pub fn roi_align(
    map: &FeatureMap,
    bbox: [f32; 4],
    stride: f32,
    bins: usize,
    sampling: Sampling,
) -> Vec<f32> {
    let scale = 1.0 / stride;
    let (x1, y1) = (bbox[0] * scale - 0.5, bbox[1] * scale - 0.5);
    let (x2, y2) = (bbox[2] * scale - 0.5, bbox[3] * scale - 0.5);
    let (bin_w, bin_h) = ((x2 - x1) / bins as f32, (y2 - y1) / bins as f32);
    let (grid_h, grid_w) = match sampling {
        Sampling::Fixed(n) => (n, n),
        Sampling::Adaptive => (
            bin_h.ceil().max(0.0) as usize,
            bin_w.ceil().max(0.0) as usize,
        ),
    };
    // torchvision divides by max(count, 1): an empty grid leaves zeros.
    let norm = 1.0 / (grid_h * grid_w).max(1) as f32;
    let c = map.channels;
    let mut out = vec![0f32; c * bins * bins];
    let mut sum = vec![0f32; c];
    for by in 0..bins {
        for bx in 0..bins {
            sum.fill(0.0);
            for iy in 0..grid_h {
                let y = y1 + by as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let x = x1 + bx as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    for (cell, weight) in taps(map, y, x).into_iter().flatten() {
                        let row = &map.data[cell * c..(cell + 1) * c];
                        sum.iter_mut().zip(row).for_each(|(s, v)| *s += weight * v);
                    }
                }
            }
            let bin = by * bins + bx;
            for (ch, s) in sum.iter().enumerate() {
                out[ch * bins * bins + bin] = s * norm;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_ramp_averages_to_its_centre() {
        // value = x on an 8×8 map: the mean over a box inside the map is the box's centre.
        let data: Vec<f32> = (0..64).map(|i| (i % 8) as f32).collect();
        let map = FeatureMap {
            data: &data,
            channels: 1,
            height: 8,
            width: 8,
        };
        // Box from x = 1 to 5 cells, stride 1: the ramp is sampled at x − 0.5, centre 2.5.
        let v = roi_align(&map, [1.0, 1.0, 5.0, 5.0], 1.0, 1, Sampling::Adaptive);
        assert!((v[0] - 2.5).abs() < 1e-5, "{v:?}");
        // Stride 2 halves the box's coordinates; 2×2 bins split it at x = 2.5.
        let v = roi_align(&map, [2.0, 2.0, 10.0, 10.0], 2.0, 2, Sampling::Fixed(2));
        assert_eq!(v.len(), 4);
        assert!(
            (v[0] - 1.5).abs() < 1e-5 && (v[1] - 3.5).abs() < 1e-5,
            "{v:?}"
        );
    }

    #[test]
    fn samples_outside_the_map_count_zero() {
        let data = vec![1.0f32; 16];
        let map = FeatureMap {
            data: &data,
            channels: 1,
            height: 4,
            width: 4,
        };
        // Half the box lies beyond x = 5 (> width + 1): those samples contribute nothing.
        let v = roi_align(&map, [0.5, 0.0, 13.0, 4.0], 1.0, 1, Sampling::Fixed(2));
        assert!(v[0] < 1.0 && v[0] > 0.0, "{v:?}");
    }

    /// torchvision 0.29's `roi_align(aligned=True)` on the fixture's maps and boxes, for
    /// 1×1, 2×2 and 7×7 bins, adaptive and fixed sampling, within 1e-4.
    #[test]
    fn matches_torchvision() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/roi_align/reference.json"
        );
        let reference: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let boxes: Vec<[f32; 4]> = serde_json::from_value(reference["boxes"].clone()).unwrap();
        let floats =
            |v: &serde_json::Value| -> Vec<f32> { serde_json::from_value(v.clone()).unwrap() };
        let mut compared = 0;
        for case in reference["cases"].as_array().unwrap() {
            let [c, h, w]: [usize; 3] = serde_json::from_value(case["shape"].clone()).unwrap();
            let stride = case["stride"].as_f64().unwrap() as f32;
            // (C, H, W) to channels last.
            let chw = floats(&case["map"]);
            let hwc: Vec<f32> = (0..h * w)
                .flat_map(|cell| (0..c).map(move |ch| (cell, ch)))
                .map(|(cell, ch)| chw[ch * h * w + cell])
                .collect();
            let map = FeatureMap {
                data: &hwc,
                channels: c,
                height: h,
                width: w,
            };
            for out in case["outputs"].as_array().unwrap() {
                let bins = out["output_size"].as_u64().unwrap() as usize;
                let sampling = match out["sampling_ratio"].as_i64().unwrap() {
                    n if n > 0 => Sampling::Fixed(n as usize),
                    _ => Sampling::Adaptive,
                };
                let expected = floats(&out["output"]);
                let per_box = c * bins * bins;
                for (k, bbox) in boxes.iter().enumerate() {
                    let got = roi_align(&map, *bbox, stride, bins, sampling);
                    let want = &expected[k * per_box..(k + 1) * per_box];
                    let worst = got
                        .iter()
                        .zip(want)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst < 1e-4,
                        "map {c}x{h}x{w} stride {stride}, box {bbox:?}, {bins}x{bins}, {sampling:?}: {worst}"
                    );
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 3 * 6 * boxes.len());
    }
}
