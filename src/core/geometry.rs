//! Box geometry on xyxy boxes in pixels, 0-based as torchvision computes it (no VOC "+1"
//! pixel): what NMS, the open-set matching of eval and the video tracker share.

/// Area of an xyxy box.
pub fn area(r: &[f32; 4]) -> f32 {
    (r[2] - r[0]) * (r[3] - r[1])
}

/// Area of the overlap of two xyxy boxes.
pub fn intersection(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    iw * ih
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let inter = intersection(a, b);
    inter / (area(a) + area(b) - inter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_is_zero_based() {
        assert_eq!(iou(&[0.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]), 1.0);
        assert!(
            (iou(&[0.0, 0.0, 10.0, 10.0], &[5.0, 0.0, 15.0, 10.0]) - 50.0 / 150.0).abs() < 1e-6
        );
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[1.0, 1.0, 2.0, 2.0]), 0.0);
    }
}
