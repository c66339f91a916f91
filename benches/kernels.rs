//! The hot CPU kernels, fused against Candle's own ops: `cargo bench --bench kernels`.
//!
//! Shapes are yolov8n's at 640² (the first conv, a backbone 3×3, a head 3×3 and a C2f 1×1).

use candle_core::{DType, Device, Module, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use oodbox::nn::activation::{bias_act, Activation};
use oodbox::nn::Conv2dNhwc;

fn convolutions(c: &mut Criterion) {
    let dev = Device::Cpu;
    // (name, c_in, c_out, k, stride, h = w)
    let shapes = [
        ("stem 3->16 k3 s2 @640", 3, 16, 3, 2, 640),
        ("c2f 32->32 k3 @80", 32, 32, 3, 1, 80),
        ("head 64->64 k3 @40", 64, 64, 3, 1, 40),
        ("c2f 128->64 k1 @80", 128, 64, 1, 1, 80),
    ];
    let mut group = c.benchmark_group("conv+bias+silu");
    group.sample_size(20);
    for (name, c_in, c_out, k, stride, size) in shapes {
        let weight = Tensor::randn(0f32, 0.1, (c_out, c_in, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 0.1, c_out, &dev).unwrap();
        let nhwc = Tensor::randn(0f32, 1., (1, size, size, c_in), &dev).unwrap();
        let nchw = nhwc.permute((0, 3, 1, 2)).unwrap().contiguous().unwrap();
        let fused =
            Conv2dNhwc::new(&weight, Some(&bias), stride, k / 2, 1, Activation::Silu).unwrap();
        let portable = fused.clone().without_avx512();
        let config = candle_nn::Conv2dConfig {
            padding: k / 2,
            stride,
            ..Default::default()
        };
        let candle = candle_nn::Conv2d::new(weight, Some(bias), config);
        group.bench_function(format!("{name} fused"), |b| {
            b.iter(|| fused.forward(&nhwc).unwrap())
        });
        group.bench_function(format!("{name} fused, gemm crate"), |b| {
            b.iter(|| portable.forward(&nhwc).unwrap())
        });
        group.bench_function(format!("{name} candle"), |b| {
            b.iter(|| candle.forward(&nchw).unwrap().silu().unwrap())
        });
    }
    group.finish();
}

fn silu(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 2., (1 << 20,), &dev).unwrap();
    let values: Vec<f32> = x.to_vec1().unwrap();
    let bias = vec![0.1f32; 64];
    let mut group = c.benchmark_group("silu 1M");
    group.bench_function("fused bias_act", |b| {
        b.iter(|| {
            let mut v = values.clone();
            bias_act(&mut v, &bias, Activation::Silu);
            v
        })
    });
    group.bench_function("candle silu", |b| {
        b.iter(|| x.silu().unwrap().to_dtype(DType::F32).unwrap())
    });
    group.finish();
}

criterion_group!(benches, convolutions, silu);
criterion_main!(benches);
