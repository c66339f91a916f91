//! Convolution + bias + activation as one Candle custom op on channels-last (NHWC) tensors.
//!
//! Candle's CPU `conv2d` works channels-first: every call repacks its input into a fresh im2col
//! matrix the size of the whole map, multiplies, copies the result back to NCHW, and then the
//! bias and the activation each make another full pass. Here the map stays NHWC from layer to
//! layer, so a pixel's channels are one contiguous row. On AVX-512 CPUs (`avx512.rs`):
//! - a pointwise convolution multiplies the input rows where they lie (channel slices of a
//!   map, and the maps of a concatenation, each read through their own stride);
//! - a k×k convolution copies the input rows of each tile into a zero-bordered window in cache,
//!   and each kernel tap of a block of output pixels is a shifted, strided view of it: no im2col;
//! - bias and activation are applied in registers before a block is stored.
//!
//! Elsewhere, patch rows are gathered tile by tile into a buffer that stays in cache and
//! multiplied by the `gemm` crate, then get their bias and activation while still hot. Either
//! way tiles run in parallel on Candle's thread count, each product single-threaded, which
//! keeps batch 1 fast.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::OnceLock;

use super::activation::{bias_act, repeat_for_rows, Activation};
#[cfg(target_arch = "x86_64")]
use super::avx512::{PackedWeights, Segment, MR};

/// Patch rows gathered per tile: about 256 KiB of f32, well inside L2 with the weights.
const TILE_FLOATS: usize = 64 * 1024;
/// Input window of a direct convolution's tile: about 512 KiB of f32.
#[cfg(target_arch = "x86_64")]
const WINDOW_FLOATS: usize = 128 * 1024;

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

    /// `act(conv(x) + bias) + residual`, the residual added as each block is stored (no pass
    /// of its own); `residual` has the output's shape.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        let residual = readable(residual)?;
        let (x_storage, x_layout) = x.storage_and_layout();
        let (r_storage, r_layout) = residual.storage_and_layout();
        let (
            candle_core::Storage::Cpu(CpuStorage::F32(xd)),
            candle_core::Storage::Cpu(CpuStorage::F32(rd)),
        ) = (&*x_storage, &*r_storage)
        else {
            candle_core::bail!("conv2d-nhwc: f32 CPU tensors only");
        };
        let (out, shape) = self.run(
            &InputMap::new(xd, x_layout)?,
            Some(&InputMap::new(rd, r_layout)?),
        )?;
        Tensor::from_vec(out, shape, x.device())
    }

    /// The convolution of the channel concatenation of `parts`, all `(B, H, W, C_i)` maps of
    /// one size. A pointwise convolution on the AVX-512 path reads each part where it lies, so
    /// the concatenation is never made; otherwise the parts are concatenated first.
    pub fn forward_cat(&self, parts: &[&Tensor]) -> candle_core::Result<Tensor> {
        match parts {
            [x] => self.forward(x),
            _ => self.cat_add(parts, None),
        }
    }

    /// [`Self::forward_cat`] plus `residual`, as in [`Self::forward_add`].
    pub fn forward_cat_add(
        &self,
        parts: &[&Tensor],
        residual: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match parts {
            [x] => self.forward_add(x, residual),
            _ => self.cat_add(parts, Some(residual)),
        }
    }

    fn cat_add(&self, parts: &[&Tensor], residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        if let (true, Some(packed)) = (self.is_pointwise(), &self.avx512) {
            let guards: Vec<_> = parts.iter().map(|t| t.storage_and_layout()).collect();
            let maps: Vec<InputMap> = guards
                .iter()
                .filter_map(|(storage, layout)| match &**storage {
                    candle_core::Storage::Cpu(CpuStorage::F32(data)) => {
                        InputMap::new(data, layout).ok()
                    }
                    _ => None,
                })
                .filter(InputMap::rows_are_uniform)
                .collect();
            let size = |m: &InputMap| (m.b, m.h, m.w);
            let residual = residual.map(readable).transpose()?;
            let r_guard = residual.as_ref().map(Tensor::storage_and_layout);
            let res = match &r_guard {
                Some((storage, layout)) => match &**storage {
                    candle_core::Storage::Cpu(CpuStorage::F32(data)) => {
                        Some(InputMap::new(data, layout)?)
                    }
                    _ => candle_core::bail!("conv2d-nhwc: f32 CPU residual only"),
                },
                None => None,
            };
            let fits = |m: &InputMap| {
                (m.b, m.h, m.w, m.c) == (maps[0].b, maps[0].h, maps[0].w, self.c_out)
            };
            if maps.len() == parts.len()
                && maps.iter().all(|m| size(m) == size(&maps[0]))
                && maps.iter().map(|m| m.c).sum::<usize>() == self.c_in
                && res.as_ref().is_none_or(fits)
            {
                let (b, h, w) = size(&maps[0]);
                let mut out = uninit(b * h * w * self.c_out);
                let threads = threads();
                self.pointwise(packed, &maps, res.as_ref(), threads, &mut out);
                return Tensor::from_vec(
                    assume_init(out),
                    (b, h, w, self.c_out),
                    parts[0].device(),
                );
            }
        }
        let x = Tensor::cat(parts, 3)?;
        match residual {
            Some(r) => self.forward_add(&x, r),
            None => self.forward(&x),
        }
    }

    /// The same convolution through the portable `gemm` kernels only.
    pub fn without_avx512(self) -> Self {
        Self {
            #[cfg(target_arch = "x86_64")]
            avx512: None,
            ..self
        }
    }

    /// `dst (rows × c_out) = lhs (rows × k, row stride lhs_rs) · weight`, through the portable
    /// `gemm` crate.
    ///
    /// # Safety
    /// `lhs` must hold `rows` rows of `k` values at stride `lhs_rs`, `dst` `rows × c_out`.
    unsafe fn multiply(&self, lhs: *const f32, lhs_rs: usize, rows: usize, dst: *mut f32) {
        let k = self.weight.len() / self.c_out;
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

/// `t` as the kernels read a residual: channels contiguous, pixels at one stride (a channel
/// slice qualifies, so C3k2's split halves are read in place); copied only otherwise.
fn readable(t: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, w, _) = t.dims4()?;
    let s = t.stride();
    if s[3] == 1 && s[1] == w * s[2] && (b == 1 || s[0] == h * s[1]) {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The input map as strided memory: channels contiguous, any pixel, row and batch strides.
struct InputMap<'a> {
    data: &'a [f32],
    strides: [usize; 3],
    b: usize,
    h: usize,
    w: usize,
    c: usize,
}

impl<'a> InputMap<'a> {
    fn new(data: &'a [f32], layout: &Layout) -> candle_core::Result<Self> {
        let (b, h, w, c) = layout.shape().dims4()?;
        let s = layout.stride();
        if s[3] != 1 {
            candle_core::bail!(
                "conv2d-nhwc: input {:?} with strides {s:?}; expected contiguous channels",
                layout.shape().dims()
            );
        }
        Ok(InputMap {
            data: &data[layout.start_offset()..],
            strides: [s[0], s[1], s[2]],
            b,
            h,
            w,
            c,
        })
    }

    /// The values of pixel `(y, x)` of image `image`, from channel 0 on.
    fn pixel(&self, image: usize, y: usize, x: usize) -> &'a [f32] {
        let [sb, sh, sw] = self.strides;
        &self.data[image * sb + y * sh + x * sw..]
    }

    /// Whether pixel `r` (counting over batch, rows and columns) starts at `r · strides[2]`.
    fn rows_are_uniform(&self) -> bool {
        let [sb, sh, sw] = self.strides;
        sh == self.w * sw && (self.b == 1 || sb == self.h * sh)
    }
}

/// Input rows `first .. first + rows` (which may start above or end below the map) of image
/// `image`, as a window `w + 2·pad` pixels wide: zeros outside the map, then `slack` zeroed
/// pixels, which the rows of a block that are not stored may read.
#[cfg(target_arch = "x86_64")]
fn fill_window(
    input: &InputMap,
    image: usize,
    first: isize,
    rows: usize,
    pad: usize,
    slack: usize,
    window: &mut Vec<f32>,
) {
    let (c, w) = (input.c, input.w);
    let row_len = (w + 2 * pad) * c;
    let [sb, sh, sw] = input.strides;
    // Every value is written below, so the buffer needs no clearing.
    window.resize(rows * row_len + slack * c, 0.0);
    let (body, rest) = window.split_at_mut(rows * row_len);
    rest.fill(0.0);
    for (r, row) in body.chunks_exact_mut(row_len).enumerate() {
        let y = first + r as isize;
        if y < 0 || y >= input.h as isize {
            row.fill(0.0);
            continue;
        }
        row[..pad * c].fill(0.0);
        row[(pad + w) * c..].fill(0.0);
        let src = &input.data[image * sb + y as usize * sh..];
        let dst = &mut row[pad * c..(pad + w) * c];
        if sw == c {
            dst.copy_from_slice(&src[..w * c]);
        } else {
            for (x, px) in dst.chunks_exact_mut(c).enumerate() {
                px.copy_from_slice(&src[x * sw..x * sw + c]);
            }
        }
    }
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
        let (out, shape) = self.run(&InputMap::new(data, layout)?, None)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

impl Conv2dNhwc {
    /// The output values and shape, plus `residual` (of the output's shape) when given.
    fn run(
        &self,
        input: &InputMap,
        residual: Option<&InputMap>,
    ) -> candle_core::Result<(Vec<f32>, Shape)> {
        if input.c != self.c_in {
            candle_core::bail!(
                "conv2d-nhwc: input {:?} has {} channels; expected {}",
                (input.b, input.h, input.w, input.c),
                input.c,
                self.c_in
            );
        }
        let b = input.b;
        let (ho, wo) = self.out_size(input.h, input.w)?;
        if let Some(r) = residual {
            if (r.b, r.h, r.w, r.c) != (b, ho, wo, self.c_out) || !r.rows_are_uniform() {
                candle_core::bail!(
                    "conv2d-nhwc: residual {:?} for an output of {:?}",
                    (r.b, r.h, r.w, r.c),
                    (b, ho, wo, self.c_out)
                );
            }
        }
        let mut out = uninit(b * ho * wo * self.c_out);
        let threads = threads();
        let shape = Shape::from((b, ho, wo, self.c_out));
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.avx512 {
            if self.is_pointwise() && input.rows_are_uniform() {
                self.pointwise(
                    packed,
                    std::slice::from_ref(input),
                    residual,
                    threads,
                    &mut out,
                );
            } else {
                self.direct(packed, input, residual, (ho, wo), threads, &mut out);
            }
            return Ok((assume_init(out), shape));
        }
        self.gathered(input, residual, (ho, wo), threads, &mut out);
        Ok((assume_init(out), shape))
    }
}

/// Candle's thread count: `RAYON_NUM_THREADS` when set (the Python package's
/// `set_num_threads` changes it at run time), else Candle's default, computed once:
/// `candle_core::utils::get_num_threads` parses `/proc/cpuinfo` on every call, a third of a
/// YOLOv8n forward at 256² when called per layer.
fn threads() -> usize {
    static DEFAULT: OnceLock<usize> = OnceLock::new();
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| *DEFAULT.get_or_init(|| candle_core::utils::get_num_threads().max(1)))
}

/// `len` values, left uninitialised: zeroing every output map costs a full extra pass over
/// memory, and the convolution writes all of them before anything reads them.
fn uninit(len: usize) -> Vec<MaybeUninit<f32>> {
    let mut out = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` needs no initialisation; the capacity was just reserved.
    unsafe { out.set_len(len) };
    out
}

/// The output buffer once every element has been written.
fn assume_init(out: Vec<MaybeUninit<f32>>) -> Vec<f32> {
    let mut out = ManuallyDrop::new(out);
    // SAFETY: the callers write every element; `MaybeUninit<f32>` has `f32`'s layout, and the
    // allocation is handed over whole (pointer, length, capacity).
    unsafe { Vec::from_raw_parts(out.as_mut_ptr().cast::<f32>(), out.len(), out.capacity()) }
}

impl Conv2dNhwc {
    /// A pointwise convolution of the channel concatenation of `parts` (one or more maps of
    /// the same size, rows at a uniform stride), read in place: each part is one segment of the
    /// product's shared dimension.
    #[cfg(target_arch = "x86_64")]
    fn pointwise(
        &self,
        packed: &PackedWeights,
        parts: &[InputMap],
        residual: Option<&InputMap>,
        threads: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        let pixels = out.len() / self.c_out;
        let tile = pixels.div_ceil(4 * threads).next_multiple_of(MR);
        out.par_chunks_mut(tile * self.c_out)
            .enumerate()
            .for_each(|(t, dst)| {
                let first = t * tile;
                let segments: Vec<Segment> = parts
                    .iter()
                    .map(|part| Segment {
                        ptr: part.data[first * part.strides[2]..].as_ptr(),
                        lda: part.strides[2],
                        len: part.c,
                    })
                    .collect();
                // SAFETY: each part holds `pixels` rows at its uniform stride (checked by the
                // callers), from `first` on at least this tile's; `dst` is this tile's rows of
                // `c_out` values, all of which the product writes.
                unsafe {
                    packed.matmul(
                        &segments,
                        dst.len() / self.c_out,
                        dst.as_mut_ptr().cast(),
                        self.c_out,
                        residual.map(|r| (r.data[first * r.strides[2]..].as_ptr(), r.strides[2])),
                        &self.bias,
                        self.act,
                    )
                };
            });
    }

    /// The convolution without im2col. Each tile of whole output rows first copies the input
    /// rows it reads into a zero-bordered window (a thread's buffer, small enough to stay in
    /// cache); every tap of a block of MR output pixels is then a shifted, strided view of that
    /// window, which the micro-kernel reads in place (see [`PackedWeights::block`]). Bias and
    /// activation are applied before the block is stored.
    #[cfg(target_arch = "x86_64")]
    fn direct(
        &self,
        packed: &PackedWeights,
        input: &InputMap,
        residual: Option<&InputMap>,
        (ho, wo): (usize, usize),
        threads: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        let (k_h, k_w) = self.kernel;
        let (c, stride, dilation, pad) = (self.c_in, self.stride, self.dilation, self.padding);
        let wp = input.w + 2 * pad;
        let taps: Vec<usize> = (0..k_h)
            .flat_map(|ky| (0..k_w).map(move |kx| (ky * wp + kx) * dilation * c))
            .collect();
        // Input rows a tile of `rows` output rows reads.
        let window_rows = |rows: usize| (rows - 1) * stride + (k_h - 1) * dilation + 1;
        let row_len = wo * self.c_out;
        // Enough tiles for every thread, each window within about 512 KiB.
        let mut rows_per_tile = ho.div_ceil((4 * threads).div_ceil(input.b)).max(1);
        while rows_per_tile > 1 && window_rows(rows_per_tile) * wp * c > WINDOW_FLOATS {
            rows_per_tile = rows_per_tile.div_ceil(2);
        }
        out.par_chunks_mut(ho * row_len)
            .enumerate()
            .for_each(|(bi, image_out)| {
                image_out
                    .par_chunks_mut(rows_per_tile * row_len)
                    .enumerate()
                    .for_each_init(Vec::new, |window, (t, dst)| {
                        let first_row = t * rows_per_tile;
                        let rows = dst.len() / row_len;
                        let first_in = (first_row * stride) as isize - pad as isize;
                        let slack = MR * stride;
                        fill_window(input, bi, first_in, window_rows(rows), pad, slack, window);
                        let dst = dst.as_mut_ptr().cast::<f32>();
                        let mut segments: Vec<Segment> = taps
                            .iter()
                            .map(|_| Segment {
                                ptr: std::ptr::null(),
                                lda: 0,
                                len: c,
                            })
                            .collect();
                        // The residual of output pixel (oy, ox) of this tile.
                        let res = |oy: usize, ox: usize| match residual {
                            Some(r) => r.pixel(bi, first_row + oy, ox).as_ptr(),
                            None => std::ptr::null(),
                        };
                        let mut run =
                            |at: usize,
                             lda: usize,
                             out_rows: &[*mut f32; MR],
                             res_rows: &[*const f32; MR]| {
                                for (segment, tap) in segments.iter_mut().zip(&taps) {
                                    segment.ptr = window[at + tap..].as_ptr();
                                    segment.lda = lda;
                                }
                                for panel in 0..packed.panel_count() {
                                    // SAFETY: every tap of every one of the MR rows lies within
                                    // the window or the slack after it (`fill_window`), and each
                                    // non-null row is an output pixel with `c_out` values; the
                                    // blocks write every pixel of these rows.
                                    unsafe {
                                        packed.block(
                                            panel, &segments, out_rows, res_rows, &self.bias,
                                            self.act,
                                        )
                                    };
                                }
                            };
                        // Blocks of MR output pixels: with stride 1 they run on across output
                        // rows (the pixels in between, over the padding, are computed and not
                        // stored), so narrow maps waste little on partial blocks; with a
                        // larger stride each output row is cut into blocks of its own.
                        if stride == 1 {
                            let end = (rows - 1) * wp + wo;
                            for q in (0..end).step_by(MR) {
                                let mut out_rows = [std::ptr::null_mut(); MR];
                                let mut res_rows = [std::ptr::null(); MR];
                                for i in 0..MR {
                                    let (oy, ox) = ((q + i) / wp, (q + i) % wp);
                                    if q + i < end && ox < wo {
                                        // SAFETY: (oy, ox) is an output pixel of this tile.
                                        out_rows[i] =
                                            unsafe { dst.add((oy * wo + ox) * self.c_out) };
                                        res_rows[i] = res(oy, ox);
                                    }
                                }
                                run(q * c, c, &out_rows, &res_rows);
                            }
                        } else {
                            for oy in 0..rows {
                                for ox in (0..wo).step_by(MR) {
                                    let mut out_rows = [std::ptr::null_mut(); MR];
                                    let mut res_rows = [std::ptr::null(); MR];
                                    for i in 0..MR.min(wo - ox) {
                                        // SAFETY: (oy, ox + i) is an output pixel of this tile.
                                        out_rows[i] =
                                            unsafe { dst.add((oy * wo + ox + i) * self.c_out) };
                                        res_rows[i] = res(oy, ox + i);
                                    }
                                    let at = (oy * stride * wp + ox * stride) * c;
                                    run(at, stride * c, &out_rows, &res_rows);
                                }
                            }
                        }
                    });
            });
    }

    /// The portable path: patch rows gathered tile by tile (im2col in cache, or the rows in
    /// place for a pointwise convolution), multiplied by the `gemm` crate, then bias and
    /// activation.
    fn gathered(
        &self,
        input: &InputMap,
        residual: Option<&InputMap>,
        (ho, wo): (usize, usize),
        threads: usize,
        out: &mut [MaybeUninit<f32>],
    ) {
        let k = self.kernel.0 * self.kernel.1 * self.c_in;
        let in_place = self.is_pointwise() && input.rows_are_uniform();
        let pixels = out.len() / self.c_out;
        // Enough tiles to keep every thread busy, each small enough for its patch rows to
        // stay in cache.
        let tile = (TILE_FLOATS / k.max(1))
            .min(pixels.div_ceil(4 * threads))
            .max(8);
        out.par_chunks_mut(tile * self.c_out)
            .enumerate()
            .for_each_init(Vec::new, |patches, (t, dst)| {
                let first = t * tile;
                let rows = dst.len() / self.c_out;
                let (lhs, lhs_rs) = if in_place {
                    (&input.data[first * input.strides[2]..], input.strides[2])
                } else {
                    self.gather(input, (ho, wo), first, rows, patches);
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
                if let Some(r) = residual {
                    for (i, row) in dst.chunks_exact_mut(self.c_out).enumerate() {
                        let p = first + i;
                        let src = r.pixel(p / (ho * wo), (p / wo) % ho, p % wo);
                        for (y, &v) in row.iter_mut().zip(src) {
                            *y += v;
                        }
                    }
                }
            });
    }

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

    #[test]
    fn a_pointwise_convolution_of_parts_equals_one_of_their_concatenation() {
        let dev = Device::Cpu;
        // C2f's cv2 input: the two halves of one map (channel slices) and a separate map.
        let halves = Tensor::randn(0f32, 1., (2, 5, 7, 8), &dev).unwrap();
        let halves = halves.chunk(2, 3).unwrap();
        let third = Tensor::randn(0f32, 1., (2, 5, 7, 4), &dev).unwrap();
        let parts = [&halves[0], &halves[1], &third];
        for c_out in [3, 16, 40] {
            let wt = Tensor::randn(0f32, 0.5, (c_out, 12, 1, 1), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.5, c_out, &dev).unwrap();
            let op = Conv2dNhwc::new(&wt, Some(&b), 1, 0, 1, Activation::Silu).unwrap();
            let want = plain(
                &Tensor::cat(&parts, 3).unwrap(),
                &wt,
                &b,
                1,
                0,
                1,
                Activation::Silu,
            );
            for op in [op.clone(), op.without_avx512()] {
                let got = op.forward_cat(&parts).unwrap();
                assert_eq!(got.dims(), want.dims());
                let d = max_rel_diff(&got, &want);
                assert!(d < 1e-5, "12->{c_out}: {d:e}");
            }
        }
    }

    #[test]
    fn a_fused_residual_equals_the_convolution_plus_the_residual() {
        let dev = Device::Cpu;
        // (c_in, c_out, k, stride, h, w): the direct path with stride 1 (blocks running across
        // rows) and 2, the pointwise path, a partial last block.
        for (c_in, c_out, k, stride, h, w) in [
            (8, 8, 3, 1, 9, 7),
            (6, 40, 3, 2, 11, 13),
            (12, 20, 1, 1, 5, 7),
        ] {
            let x = Tensor::randn(0f32, 1., (2, h, w, c_in), &dev).unwrap();
            let wt = Tensor::randn(0f32, 0.5, (c_out, c_in, k, k), &dev).unwrap();
            let b = Tensor::randn(0f32, 0.5, c_out, &dev).unwrap();
            let op = Conv2dNhwc::new(&wt, Some(&b), stride, k / 2, 1, Activation::Silu).unwrap();
            let (ho, wo) = op.out_size(h, w).unwrap();
            // The residual as a channel slice of a wider map, as C3k2's split makes it.
            let wide = Tensor::randn(0f32, 1., (2, ho, wo, 2 * c_out), &dev).unwrap();
            let residual = wide.narrow(3, c_out, c_out).unwrap();
            for op in [op.clone(), op.without_avx512()] {
                let want = (op.forward(&x).unwrap() + &residual).unwrap();
                let got = op.forward_add(&x, &residual).unwrap();
                assert_eq!(
                    max_rel_diff(&got, &want),
                    0.0,
                    "{c_in}->{c_out} k{k} s{stride}"
                );
            }
        }
        // The pointwise convolution of a concatenation, with a residual (YOLO26's SPPF).
        let parts = Tensor::randn(0f32, 1., (1, 4, 6, 10), &dev).unwrap();
        let parts = parts.chunk(2, 3).unwrap();
        let wt = Tensor::randn(0f32, 0.5, (16, 10, 1, 1), &dev).unwrap();
        let op = Conv2dNhwc::new(&wt, None, 1, 0, 1, Activation::Silu).unwrap();
        let residual = Tensor::randn(0f32, 1., (1, 4, 6, 16), &dev).unwrap();
        let parts = [&parts[0], &parts[1]];
        let want = (op.forward_cat(&parts).unwrap() + &residual).unwrap();
        let got = op.forward_cat_add(&parts, &residual).unwrap();
        assert_eq!(max_rel_diff(&got, &want), 0.0);
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
