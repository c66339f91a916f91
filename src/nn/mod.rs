//! Building blocks shared by the detectors: a convolution that runs either through Candle's own
//! channels-first ops (any device; the reference) or through the fused channels-last CPU op.

pub mod activation;
mod avx512;
pub mod conv;
mod conv_grad;
pub mod depthwise;
pub mod pool;

use candle_core::{DType, Module, Tensor};
use candle_nn::Conv2d;
use rayon::prelude::*;

pub use activation::Activation;
pub use conv::Conv2dNhwc;
pub use depthwise::DepthwiseNhwc;

/// How a network's feature maps are laid out between layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapLayout {
    /// `(B, C, H, W)` through Candle's ops: every device.
    Nchw,
    /// `(B, H, W, C)` through the fused CPU convolution.
    Nhwc,
}

impl MapLayout {
    /// The fast layout on CPU, Candle's everywhere else.
    pub fn for_device(device: &candle_core::Device) -> Self {
        if device.is_cpu() {
            MapLayout::Nhwc
        } else {
            MapLayout::Nchw
        }
    }

    pub fn channel_dim(self) -> usize {
        match self {
            MapLayout::Nchw => 1,
            MapLayout::Nhwc => 3,
        }
    }

    /// `(H, W)` of a map in this layout.
    pub fn spatial(self, x: &Tensor) -> candle_core::Result<(usize, usize)> {
        let (_, a, b, c) = x.dims4()?;
        Ok(match self {
            MapLayout::Nchw => (b, c),
            MapLayout::Nhwc => (a, b),
        })
    }

    /// Converts an NCHW map into this layout.
    pub fn from_nchw(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            MapLayout::Nchw => Ok(x.clone()),
            MapLayout::Nhwc if x.device().is_cpu() && x.dtype() == DType::F32 => nchw_to_nhwc(x),
            MapLayout::Nhwc => x.permute((0, 2, 3, 1))?.contiguous(),
        }
    }

    /// Converts a map in this layout into NCHW.
    pub fn to_nchw(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            MapLayout::Nchw => Ok(x.clone()),
            MapLayout::Nhwc => x.permute((0, 3, 1, 2))?.contiguous(),
        }
    }

    /// Converts a map in this layout into NHWC.
    pub fn to_nhwc(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            MapLayout::Nchw => x.permute((0, 2, 3, 1))?.contiguous(),
            MapLayout::Nhwc => Ok(x.clone()),
        }
    }
}

/// NCHW to NHWC on the CPU, in parallel over blocks of pixels. Candle's strided copy of the
/// permuted view walks the output one element at a time on one thread; for the network's input
/// image that took about 3% of a yolov8n forward pass.
fn nchw_to_nhwc(x: &Tensor) -> candle_core::Result<Tensor> {
    const BLOCK: usize = 1024;
    let (b, c, h, w) = x.dims4()?;
    let plane = h * w;
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &*storage else {
        candle_core::bail!("nchw_to_nhwc: expected an f32 CPU tensor");
    };
    let input = &data[layout.start_offset()..][..b * c * plane];
    let mut out = vec![0f32; input.len()];
    out.par_chunks_mut(BLOCK * c)
        .enumerate()
        .for_each(|(i, dst)| {
            for (j, px) in dst.chunks_exact_mut(c).enumerate() {
                let pixel = i * BLOCK + j;
                let (image, p) = (pixel / plane, pixel % plane);
                let src = &input[image * c * plane + p..];
                for (ch, v) in px.iter_mut().enumerate() {
                    *v = src[ch * plane];
                }
            }
        });
    Tensor::from_vec(out, (b, h, w, c), x.device())
}

/// Runs `f` on a thread of rayon's pool, which then takes its share of every parallel layer
/// itself. Called from outside the pool, each layer's parallel loop would hand its work over to
/// the pool and put the calling thread to sleep until it is done: a sleep and a wake-up per
/// layer, and one thread more than there are cores contending for them.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// The concatenation along the last dimension of `(B, C, N_i)` head outputs (the levels of a
/// detection head). Where each is the transposed view of a contiguous channels-last `(B, N_i,
/// C)` map, as the fused path makes them, the transpose and the concatenation are one parallel
/// pass; Candle's strided copy made them one value at a time on one thread.
pub fn cat_levels(levels: &[Tensor]) -> candle_core::Result<Tensor> {
    const ROWS: usize = 8;
    let transposed = |t: &Tensor| -> Option<(usize, usize, usize)> {
        let (b, c, n) = t.dims3().ok()?;
        let layout = t.layout();
        let f32_cpu = t.device().is_cpu() && t.dtype() == DType::F32;
        // A contiguous map (channels-first, or one channel) is Candle's to concatenate: its
        // `cat` is as fast there and keeps the graph (this copy would cut the FGSM gradient).
        let transposed = layout.stride() == [n * c, 1, c] && !layout.is_contiguous();
        (f32_cpu && transposed).then_some((b, c, n))
    };
    let dims: Option<Vec<_>> = levels.iter().map(transposed).collect();
    let same = |d: &Vec<(usize, usize, usize)>| {
        !d.is_empty() && d.iter().all(|&(b, c, _)| (b, c) == (d[0].0, d[0].1))
    };
    let Some(dims) = dims.filter(same) else {
        return Tensor::cat(levels, 2);
    };
    let (b, c) = (dims[0].0, dims[0].1);
    let total: usize = dims.iter().map(|d| d.2).sum();
    let guards: Vec<_> = levels.iter().map(Tensor::storage_and_layout).collect();
    let mut sources = Vec::with_capacity(levels.len());
    for ((storage, layout), &(_, _, n)) in guards.iter().zip(&dims) {
        let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = &**storage else {
            candle_core::bail!("cat_levels: expected f32 CPU tensors");
        };
        sources.push((&data[layout.start_offset()..][..b * n * c], n));
    }
    let mut out = vec![0f32; b * c * total];
    // Groups of up to ROWS output rows (channels of one image): each pixel's channels of a
    // group are one short contiguous read.
    out.par_chunks_mut(c * total)
        .enumerate()
        .for_each(|(image, image_out)| {
            image_out
                .par_chunks_mut(ROWS * total)
                .enumerate()
                .for_each(|(g, rows)| {
                    let (c0, count) = (g * ROWS, rows.len() / total);
                    let mut at = 0;
                    for &(src, n) in &sources {
                        let src = &src[image * n * c..][..n * c];
                        for (p, px) in src.chunks_exact(c).enumerate() {
                            for (r, &v) in px[c0..c0 + count].iter().enumerate() {
                                rows[r * total + at + p] = v;
                            }
                        }
                        at += n;
                    }
                });
        });
    Tensor::from_vec(out, (b, c, total), levels[0].device())
}

/// A convolution with bias (BatchNorm already folded in) and its activation, in both layouts.
#[derive(Debug, Clone)]
pub struct FusedConv {
    plain: Conv2d,
    act: Activation,
    /// Present when the weights live on the CPU.
    fused: Option<ChannelsLast>,
}

/// The channels-last CPU kernel of a [`FusedConv`].
#[derive(Debug, Clone)]
enum ChannelsLast {
    Dense(Conv2dNhwc),
    Depthwise(DepthwiseNhwc),
}

impl FusedConv {
    /// Dense convolutions, and depthwise ones (groups = input = output channels) with padding
    /// `k / 2`; other groupings are refused.
    pub fn new(conv: Conv2d, act: Activation) -> candle_core::Result<Self> {
        let config = conv.config();
        let (c_out, c_in_per_group, k, _) = conv.weight().dims4()?;
        let depthwise = config.groups > 1 && config.groups == c_out && c_in_per_group == 1;
        if config.groups != 1 && !(depthwise && config.padding == k / 2 && config.dilation == 1) {
            candle_core::bail!(
                "grouped convolutions other than depthwise are not supported (groups {})",
                config.groups
            );
        }
        let fused = match (conv.weight().device().is_cpu(), depthwise) {
            (false, _) => None,
            (true, false) => Some(ChannelsLast::Dense(Conv2dNhwc::new(
                conv.weight(),
                conv.bias(),
                config.stride,
                config.padding,
                config.dilation,
                act,
            )?)),
            (true, true) => {
                let zeros;
                let bias = match conv.bias() {
                    Some(b) => b,
                    None => {
                        zeros = Tensor::zeros(c_out, DType::F32, conv.weight().device())?;
                        &zeros
                    }
                };
                let dw = DepthwiseNhwc::new(conv.weight(), bias, config.stride, act)?;
                Some(ChannelsLast::Depthwise(dw))
            }
        };
        Ok(Self {
            plain: conv,
            act,
            fused,
        })
    }

    /// The convolution of the concatenation of `parts` along the channels; on the fused path,
    /// a pointwise convolution reads the parts in place instead of concatenating them.
    pub fn forward_cat(&self, parts: &[&Tensor], layout: MapLayout) -> candle_core::Result<Tensor> {
        match (layout, &self.fused) {
            (MapLayout::Nhwc, Some(ChannelsLast::Dense(fused))) => fused.forward_cat(parts),
            _ => self.forward(&Tensor::cat(parts, layout.channel_dim())?, layout),
        }
    }

    /// `self.forward_cat(parts) + residual`, the residual added as in [`Self::forward_add`].
    pub fn forward_cat_add(
        &self,
        parts: &[&Tensor],
        residual: &Tensor,
        layout: MapLayout,
    ) -> candle_core::Result<Tensor> {
        match (layout, &self.fused) {
            (MapLayout::Nhwc, Some(ChannelsLast::Dense(fused))) => {
                fused.forward_cat_add(parts, residual)
            }
            _ => self.forward_cat(parts, layout)? + residual,
        }
    }

    /// `self.forward(x) + residual`; on the fused path the residual is added as the output is
    /// stored, with no pass (nor thread pool) of its own.
    pub fn forward_add(
        &self,
        x: &Tensor,
        residual: &Tensor,
        layout: MapLayout,
    ) -> candle_core::Result<Tensor> {
        match (layout, &self.fused) {
            (MapLayout::Nhwc, Some(ChannelsLast::Dense(fused))) => fused.forward_add(x, residual),
            (MapLayout::Nhwc, Some(ChannelsLast::Depthwise(dw))) => dw.forward_add(x, residual),
            _ => self.forward(x, layout)? + residual,
        }
    }

    pub fn forward(&self, x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        match (layout, &self.fused) {
            (MapLayout::Nhwc, Some(ChannelsLast::Dense(fused))) => fused.forward(x),
            (MapLayout::Nhwc, Some(ChannelsLast::Depthwise(dw))) => dw.forward(x),
            (MapLayout::Nhwc, None) => {
                candle_core::bail!("the channels-last convolution runs on the CPU only")
            }
            (MapLayout::Nchw, _) => {
                // A gradient is wanted (FGSM): on the CPU, of the input only.
                let y = if x.track_op() && x.device().is_cpu() {
                    conv_grad::conv2d_input_grad(&self.plain, x)?
                } else {
                    self.plain.forward(x)?
                };
                match self.act {
                    Activation::Identity => Ok(y),
                    Activation::Relu => y.relu(),
                    Activation::Silu => y.silu(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cat_levels_matches_candle_cat_of_transposed_maps() {
        // Channel counts below, at and above the group of 8 rows, two images.
        for c in [4, 8, 19] {
            let levels: Vec<Tensor> = [36, 9, 4]
                .into_iter()
                .map(|n| {
                    let nhwc = Tensor::randn(0f32, 1., (2, n, c), &Device::Cpu).unwrap();
                    nhwc.transpose(1, 2).unwrap()
                })
                .collect();
            let got = cat_levels(&levels).unwrap();
            let want = Tensor::cat(&levels, 2).unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{c} channels");
        }
    }

    #[test]
    fn nchw_to_nhwc_matches_candle_across_image_boundaries() {
        // 37² pixels: blocks of 1024 pixels straddle the two images.
        for (b, c, h, w) in [(2, 3, 37, 37), (1, 5, 3, 2), (3, 1, 40, 52)] {
            let x = Tensor::randn(0f32, 1., (b, c, h, w), &Device::Cpu).unwrap();
            let got = MapLayout::Nhwc.from_nchw(&x).unwrap();
            let want = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap();
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{b}×{c}×{h}×{w}");
        }
    }
}
