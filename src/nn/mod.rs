//! Building blocks shared by the detectors: a convolution that runs either through Candle's own
//! channels-first ops (any device; the reference) or through the fused channels-last CPU op.

pub mod activation;
mod avx512;
pub mod conv;

use candle_core::{Module, Tensor};
use candle_nn::Conv2d;

pub use activation::Activation;
pub use conv::Conv2dNhwc;

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

/// A convolution with bias (BatchNorm already folded in) and its activation, in both layouts.
#[derive(Debug, Clone)]
pub struct FusedConv {
    plain: Conv2d,
    act: Activation,
    /// Present when the weights live on the CPU.
    fused: Option<Conv2dNhwc>,
}

impl FusedConv {
    pub fn new(conv: Conv2d, act: Activation) -> candle_core::Result<Self> {
        let config = conv.config();
        if config.groups != 1 {
            candle_core::bail!("grouped convolutions are not supported");
        }
        let fused = if conv.weight().device().is_cpu() {
            Some(Conv2dNhwc::new(
                conv.weight(),
                conv.bias(),
                config.stride,
                config.padding,
                config.dilation,
                act,
            )?)
        } else {
            None
        };
        Ok(Self {
            plain: conv,
            act,
            fused,
        })
    }

    pub fn forward(&self, x: &Tensor, layout: MapLayout) -> candle_core::Result<Tensor> {
        match (layout, &self.fused) {
            (MapLayout::Nhwc, Some(fused)) => fused.forward(x),
            (MapLayout::Nhwc, None) => {
                candle_core::bail!("the channels-last convolution runs on the CPU only")
            }
            (MapLayout::Nchw, _) => {
                let y = self.plain.forward(x)?;
                match self.act {
                    Activation::Identity => Ok(y),
                    Activation::Relu => y.relu(),
                    Activation::Silu => y.silu(),
                }
            }
        }
    }
}
