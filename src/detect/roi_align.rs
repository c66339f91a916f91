//! ROI-align (torchvision `roi_align` with `aligned=True`), averaged over its bins: one vector per
//! box from a feature map. Candle has no ROI-align; boxes are few, so this runs on the CPU.

/// A `(channels, height, width)` feature map, row-major.
pub struct FeatureMap<'a> {
    pub data: &'a [f32],
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// The bilinear taps (flat index, weight) of one sample point, torchvision's border rules.
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

/// The mean over `bins × bins` ROI-align bins (`sampling` points per bin side) of `map` on
/// `bbox`, given in the map's input pixels; `stride` is the map's stride.
pub fn roi_align_mean(
    map: &FeatureMap,
    bbox: [f32; 4],
    stride: f32,
    bins: usize,
    sampling: usize,
) -> Vec<f32> {
    let scale = 1.0 / stride;
    let (x1, y1) = (bbox[0] * scale - 0.5, bbox[1] * scale - 0.5);
    let (x2, y2) = (bbox[2] * scale - 0.5, bbox[3] * scale - 0.5);
    let (bin_w, bin_h) = ((x2 - x1) / bins as f32, (y2 - y1) / bins as f32);
    // Every bin averages its samples and the result averages the bins, so each sample point
    // weighs 1 / (bins² · sampling²).
    let norm = 1.0 / (bins * bins * sampling * sampling) as f32;
    let mut weights: Vec<(usize, f32)> = Vec::new();
    for by in 0..bins {
        for iy in 0..sampling {
            let y = y1 + by as f32 * bin_h + (iy as f32 + 0.5) * bin_h / sampling as f32;
            for bx in 0..bins {
                for ix in 0..sampling {
                    let x = x1 + bx as f32 * bin_w + (ix as f32 + 0.5) * bin_w / sampling as f32;
                    if let Some(t) = taps(map, y, x) {
                        weights.extend(t.iter().map(|(i, w)| (*i, w * norm)));
                    }
                }
            }
        }
    }
    let plane = map.height * map.width;
    (0..map.channels)
        .map(|c| {
            let channel = &map.data[c * plane..(c + 1) * plane];
            weights.iter().map(|(i, w)| channel[*i] * w).sum()
        })
        .collect()
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
        let v = roi_align_mean(&map, [1.0, 1.0, 5.0, 5.0], 1.0, 7, 2);
        assert!((v[0] - 2.5).abs() < 1e-5, "{v:?}");
        // Stride 2 halves the box's coordinates.
        let v = roi_align_mean(&map, [2.0, 2.0, 10.0, 10.0], 2.0, 7, 2);
        assert!((v[0] - 2.5).abs() < 1e-5, "{v:?}");
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
        let v = roi_align_mean(&map, [-0.5 + 1.0, 0.0, 13.0, 4.0], 1.0, 2, 1);
        assert!(v[0] < 1.0 && v[0] > 0.0, "{v:?}");
    }
}
