//! Convolution + bias + activation as one Candle custom op on channels-last (NHWC) tensors.
//!
//! Candle's CPU `conv2d` works channels-first: every call repacks its input into a fresh im2col
//! matrix the size of the whole map, multiplies, copies the result back to NCHW, and then the
//! bias and the activation each make another full pass. Here the map stays NHWC from layer to
//! layer, so a pixel's channels are one contiguous row: a 1×1 convolution is a plain matrix
//! product on the input rows as they lie (channel slices of a concatenation included, through
//! their row stride), and a k×k one gathers its patch rows tile by tile into a buffer that stays
//! in cache. Each tile is multiplied by the weights, pre-arranged once as a `(k·k·c_in, c_out)`
//! matrix, then gets its bias and activation while it is still hot. Tiles run in parallel on
//! Candle's thread count, each product single-threaded, which keeps batch 1 fast.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::{ManuallyDrop, MaybeUninit};

use super::activation::{bias_act, repeat_for_rows, Activation};
#[cfg(target_arch = "x86_64")]
use super::avx512::PackedWeights;

/// Patch rows gathered per tile: about 256 KiB of f32, well inside L2 with the weights.
const TILE_FLOATS: usize = 64 * 1024;

/// A convolution with its bias and activation, on `(B, H, W, C)` f32 tensors.
#[derive(Debug, Clone)]
pub struct Conv2dNhwc {
    /// `(k_h, k_w, c_in, c_out)` row-major: the im2col weight matrix.
    weight: Vec<f32>,
    /// The channel bias repeated for several rows at a time (`repeat_for_rows`).
    bias: Vec<f32>,
    c_in: usize,
    c_out: usize,
    kernel: (usize, usize),
    stride: usize,
    padding: usize,
    dilation: usize,
    act: Activation,
    /// The weights again, packed for the AVX-512 kernel when the CPU has it.
    #[cfg(target_arch = "x86_64")]
    avx512: Option<PackedWeights>,
}

impl Conv2dNhwc {
    /// From Candle's `(c_out, c_in, k_h, k_w)` weight and an optional `(c_out,)` bias.
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
        dilation: usize,
        act: Activation,
    ) -> candle_core::Result<Self> {
        let (c_out, c_in, k_h, k_w) = weight.dims4()?;
        let packed = weight
            .to_dtype(candle_core::DType::F32)?
            .permute((2, 3, 1, 0))?
            .flatten_all()?
            .to_vec1()?;
        let bias = match bias {
            Some(b) => b.to_dtype(candle_core::DType::F32)?.to_vec1()?,
            None => vec![0.0; c_out],
        };
        if bias.len() != c_out || stride == 0 || dilation == 0 {
            candle_core::bail!(
                "conv2d-nhwc: bias of {} for {c_out} outputs, stride {stride}, dilation {dilation}",
                bias.len()
            );
        }
        Ok(Self {
            #[cfg(target_arch = "x86_64")]
            avx512: PackedWeights::new(&packed, k_h * k_w * c_in, c_out),
            weight: packed,
            bias: repeat_for_rows(&bias),
            c_in,
            c_out,
            kernel: (k_h, k_w),
            stride,
            padding,
            dilation,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op1_no_bwd(self)
    }

    /// The same convolution through the portable `gemm` kernels only.
    pub fn without_avx512(self) -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            avx512: None,
            ..self
        }
    }

    /// `dst (rows × c_out) = lhs (rows × k, row stride lhs_rs) · weight`.
    ///
    /// # Safety
    /// `lhs` must hold `rows` rows of `k` values at stride `lhs_rs`, `dst` `rows × c_out`.
    unsafe fn multiply(&self, lhs: *const f32, lhs_rs: usize, rows: usize, dst: *mut f32) {
        let k = self.weight.len() / self.c_out;
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.avx512 {
            return packed.matmul(lhs, lhs_rs, rows, dst, self.c_out);
        }
        gemm::gemm(
            rows,
            self.c_out,
            k,
            dst,
            1,
            self.c_out as isize,
            false,
            lhs,
            1,
            lhs_rs as isize,
            self.weight.as_ptr(),
            1,
            self.c_out as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }

    fn out_size(&self, h: usize, w: usize) -> candle_core::Result<(usize, usize)> {
        let size = |n: usize, k: usize| {
            let span = self.dilation * (k - 1) + 1;
            (n + 2 * self.padding)
                .checked_sub(span)
                .map(|d| d / self.stride + 1)
        };
        match (size(h, self.kernel.0), size(w, self.kernel.1)) {
            (Some(ho), Some(wo)) => Ok((ho, wo)),
            _ => candle_core::bail!(
                "conv2d-nhwc: a {}×{} input is smaller than the {:?} kernel",
                h,
                w,
                self.kernel
            ),
        }
    }

    fn is_pointwise(&self) -> bool {
        self.kernel == (1, 1) && self.stride == 1 && self.padding == 0
    }
}

/// The input map as strided memory: channels contiguous, any pixel, row and batch strides.
struct InputMap<'a> {
    data: &'a [f32],
    strides: [usize; 3],
    h: usize,
    w: usize,
}

impl CustomOp1 for Conv2dNhwc {
    fn name(&self) -> &'static str {
        "conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("conv2d-nhwc: f32 input only, got {:?}", storage.dtype());
        };
        let (b, h, w, c) = layout.shape().dims4()?;
        let s = layout.stride();
        if c != self.c_in || s[3] != 1 {
            candle_core::bail!(
                "conv2d-nhwc: input {:?} with strides {s:?}; expected {} contiguous channels",
                layout.shape().dims(),
                self.c_in
            );
        }
        let input = InputMap {
            data: &data[layout.start_offset()..],
            strides: [s[0], s[1], s[2]],
            h,
            w,
        };
        let (ho, wo) = self.out_size(h, w)?;
        let pixels = b * ho * wo;
        // Left uninitialised: zeroing every output map costs a full extra pass over memory, and
        // each tile's product writes all of its values before anything reads them.
        let mut out: Vec<MaybeUninit<f32>> = Vec::with_capacity(pixels * self.c_out);
        // SAFETY: `MaybeUninit` needs no initialisation; the capacity was just reserved.
        unsafe { out.set_len(pixels * self.c_out) };
        let k = self.kernel.0 * self.kernel.1 * self.c_in;
        // Enough tiles to keep every thread busy, each small enough for its patch rows to
        // stay in cache.
        let threads = candle_core::utils::get_num_threads().max(1);
        let tile = (TILE_FLOATS / k.max(1))
            .min(pixels.div_ceil(4 * threads))
            .max(8);
        // Rows of a pointwise convolution are read in place when their stride is uniform.
        let in_place = self.is_pointwise() && s[1] == w * s[2] && (b == 1 || s[0] == h * s[1]);
        out.par_chunks_mut(tile * self.c_out)
            .enumerate()
            .for_each_init(Vec::new, |patches, (t, dst)| {
                let first = t * tile;
                let rows = dst.len() / self.c_out;
                let (lhs, lhs_rs) = if in_place {
                    (&input.data[first * s[2]..], s[2])
                } else {
                    self.gather(&input, (ho, wo), first, rows, patches);
                    (&patches[..], k)
                };
                let dst = dst.as_mut_ptr().cast::<f32>();
                // SAFETY: `lhs` holds `rows` rows of `k` values at stride `lhs_rs` (the last
                // row of an in-place view ends within the input) and `dst` is `rows × c_out`;
                // the product writes every one of those values, so the slice is then
                // initialised.
                let dst = unsafe {
                    self.multiply(lhs.as_ptr(), lhs_rs, rows, dst);
                    std::slice::from_raw_parts_mut(dst, rows * self.c_out)
                };
                bias_act(dst, &self.bias, self.act);
            });
        let mut out = ManuallyDrop::new(out);
        // SAFETY: every element was written above; `MaybeUninit<f32>` has `f32`'s layout, and
        // the allocation is handed over whole (pointer, length, capacity).
        let out = unsafe {
            Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity())
        };
        Ok((CpuStorage::F32(out), Shape::from((b, ho, wo, self.c_out))))
    }
}

impl Conv2dNhwc {
    /// Writes the patch rows of output pixels `first..first + rows` into `patches`, one row of
    /// `k_h · k_w · c_in` values per pixel, zeros where the kernel overhangs the padding.
    fn gather(
        &self,
        input: &InputMap,
        (ho, wo): (usize, usize),
        first: usize,
        rows: usize,
        patches: &mut Vec<f32>,
    ) {
        let (k_h, k_w) = self.kernel;
        let c = self.c_in;
        let k = k_h * k_w * c;
        // Every value is written below (patch or zero), so the buffer needs no clearing.
        patches.resize(rows * k, 0.0);
        let [sb, sh, sw] = input.strides;
        let (stride, dilation, pad) = (self.stride, self.dilation, self.padding as isize);
        // The taps of one kernel row are adjacent pixels: one copy when pixels are packed.
        let packed_taps = dilation == 1 && sw == c;
        let span = (k_w - 1) * dilation + 1;
        let (mut bi, mut oy, mut ox) = (first / (ho * wo), (first / wo) % ho, first % wo);
        for row in patches[..rows * k].chunks_exact_mut(k) {
            let x0 = (ox * stride) as isize - pad;
            // Taps kx in lo..hi fall inside the map; all of them away from the left and right
            // borders.
            let (lo, hi) = if x0 >= 0 && x0 + span as isize <= input.w as isize {
                (0, k_w)
            } else {
                let inside =
                    |kx: &usize| (0..input.w as isize).contains(&(x0 + (kx * dilation) as isize));
                let lo = (0..k_w).find(inside).unwrap_or(k_w);
                (lo, (lo..k_w).find(|kx| !inside(kx)).unwrap_or(k_w))
            };
            for (ky, taps) in row.chunks_exact_mut(k_w * c).enumerate() {
                let iy = (oy * stride + ky * dilation) as isize - pad;
                if iy < 0 || iy >= input.h as isize || lo >= hi {
                    taps.fill(0.0);
                    continue;
                }
                if lo > 0 || hi < k_w {
                    taps[..lo * c].fill(0.0);
                    taps[hi * c..].fill(0.0);
                }
                let base = bi * sb + iy as usize * sh;
                if packed_taps {
                    let src = base + (x0 + lo as isize) as usize * c;
                    copy(&mut taps[lo * c..hi * c], &input.data[src..]);
                } else {
                    for kx in lo..hi {
                        let src = base + (x0 + (kx * dilation) as isize) as usize * sw;
                        copy(&mut taps[kx * c..(kx + 1) * c], &input.data[src..]);
                    }
                }
            }
            ox += 1;
            if ox == wo {
                (ox, oy) = (0, oy + 1);
                if oy == ho {
                    (oy, bi) = (0, bi + 1);
                }
            }
        }
    }
}

/// Fills `dst` from the front of `src`. Patch rows of thin layers are a few floats long, where a
/// `memcpy` call costs more than the copy, so short ones go through fixed-size moves.
#[inline(always)]
fn copy(dst: &mut [f32], src: &[f32]) {
    let n = dst.len();
    if n > 32 {
        dst.copy_from_slice(&src[..n]);
        return;
    }
    let src = &src[..n];
    let mut chunks = dst.chunks_exact_mut(4);
    let mut from = src.chunks_exact(4);
    for (d, s) in (&mut chunks).zip(&mut from) {
        d.copy_from_slice(s);
    }
    for (d, s) in chunks.into_remainder().iter_mut().zip(from.remainder()) {
        *d = *s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};
    use candle_nn::Module;

    /// The reference: Candle's NCHW convolution, bias and activation, as separate ops.
    fn plain(
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        stride: usize,
        pad: usize,
        dil: usize,
        act: Activation,
    ) -> Tensor {
        let config = candle_nn::Conv2dConfig {
            padding: pad,
            stride,
            dilation: dil,
            ..Default::default()
        };
        let conv = candle_nn::Conv2d::new(w.clone(), Some(b.clone()), config);
        let y = conv.forward(&x.permute((0, 3, 1, 2)).unwrap()).unwrap();
        let y = match act {
            Activation::Identity => y,
            Activation::Relu => y.relu().unwrap(),
            Activation::Silu => y.silu().unwrap(),
        };
        y.permute((0, 2, 3, 1)).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        let scale = b
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap();
        let diff = diff.max(D::Minus1).unwrap().to_scalar::<f32>().unwrap();
        diff / scale.to_scalar::<f32>().unwrap().max(1e-12)
    }

    #[test]
    fn matches_candle_conv_on_odd_shapes_and_strided_input() {
        let dev = Device::Cpu;
        // (c_in, c_out, k, stride, pad, dilation, h, w)
        let cases = [
            (3, 16, 3, 2, 1, 1, 17, 23),
            (8, 8, 3, 1, 1, 1, 9, 5),
            (6, 10, 1, 1, 0, 1, 7, 7),
            (6, 10, 1, 2, 0, 1, 8, 9),
            (3, 12, 7, 2, 3, 1, 21, 19),
            (5, 7, 3, 1, 2, 2, 11, 13),
        ];
        for (c_in, c_out, k, stride, pad, dil, h, w) in cases {
            for act in [Activation::Identity, Activation::Relu, Activation::Silu] {
                let x = Tensor::randn(0f32, 1., (2, h, w, c_in), &dev).unwrap();
                let wt = Tensor::randn(0f32, 0.5, (c_out, c_in, k, k), &dev).unwrap();
                let b = Tensor::randn(0f32, 0.5, c_out, &dev).unwrap();
                let op = Conv2dNhwc::new(&wt, Some(&b), stride, pad, dil, act).unwrap();
                let want = plain(&x, &wt, &b, stride, pad, dil, act);
                for op in [op.clone(), op.without_avx512()] {
                    let got = op.forward(&x).unwrap();
                    assert_eq!(got.dims(), want.dims());
                    let d = max_rel_diff(&got, &want);
                    assert!(d < 1e-5, "{c_in}->{c_out} k{k} s{stride} {act:?}: {d:e}");
                }
            }
        }
        // A channel slice of a wider map (as C2f's split makes) is read through its stride.
        let wide = Tensor::randn(0f32, 1., (1, 6, 5, 12), &dev).unwrap();
        let slice = wide.narrow(3, 4, 4).unwrap();
        for k in [1, 3] {
            let wt = Tensor::randn(0f32, 0.5, (9, 4, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.5, 9, &dev).unwrap();
            let op = Conv2dNhwc::new(&wt, Some(&b), 1, k / 2, 1, Activation::Silu).unwrap();
            let got = op.forward(&slice).unwrap();
            let want = op.forward(&slice.contiguous().unwrap()).unwrap();
            assert_eq!(max_rel_diff(&got, &want), 0.0);
        }
    }

    /// Every convolution shape of a torchvision/HF ResNet-50 (v1.5: stride on the 3×3), on
    /// small maps: stem, bottleneck 1×1 and 3×3 convs, strided 3×3s and 1×1 downsamples.
    #[test]
    fn matches_candle_conv_on_every_resnet50_shape() {
        let dev = Device::Cpu;
        let mut shapes = vec![(3, 64, 7, 2, 3)];
        let mut c_in = 64;
        for (width, stride) in [(64, 1), (128, 2), (256, 2), (512, 2)] {
            let c_out = 4 * width;
            shapes.extend([
                (c_in, width, 1, 1, 0),
                (width, width, 3, stride, 1),
                (width, width, 3, 1, 1),
                (width, c_out, 1, 1, 0),
                (c_in, c_out, 1, stride, 0),
                (c_out, width, 1, 1, 0),
            ]);
            c_in = c_out;
        }
        for (c_in, c_out, k, stride, pad) in shapes {
            let x = Tensor::randn(0f32, 1., (1, 9, 7, c_in), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.1, (c_out, c_in, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.1, c_out, &dev).unwrap();
            let op = Conv2dNhwc::new(&wt, Some(&b), stride, pad, 1, Activation::Relu).unwrap();
            let want = plain(&x, &wt, &b, stride, pad, 1, Activation::Relu);
            for op in [op.clone(), op.without_avx512()] {
                let d = max_rel_diff(&op.forward(&x).unwrap(), &want);
                assert!(d < 1e-4, "{c_in}->{c_out} k{k} s{stride}: {d:e}");
            }
        }
    }

    #[test]
    fn rejects_a_map_smaller_than_the_kernel() {
        let dev = Device::Cpu;
        let wt = Tensor::zeros((4, 3, 7, 7), candle_core::DType::F32, &dev).unwrap();
        let op = Conv2dNhwc::new(&wt, None, 1, 0, 1, Activation::Relu).unwrap();
        let x = Tensor::zeros((1, 4, 4, 3), candle_core::DType::F32, &dev).unwrap();
        let err = op.forward(&x).unwrap_err().to_string();
        assert!(err.contains("smaller than the"), "{err}");
    }
}
