//! A gated feed-forward block's middle, `silu(gate) · up`, in one pass over both and one
//! allocation, split over the pool.
//!
//! Candle computes it as two operations, `silu` and then `*`, each a pass on the calling thread
//! into a fresh buffer. At a prefill of 64 positions of a 0.5 B model that is two buffers of
//! 1.2 MB and some 311,000 `expf` calls per layer while the pool's other threads wait.
//!
//! Invariant: each element is candle's, bit for bit: `g / (1 + exp(−g))`, the same `f32::exp`,
//! then times `u`. Elements are independent, so neither the thread count nor the chunking can
//! change one.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

/// Below this many elements a call runs on the calling thread (a decode step of a small model).
const SERIAL_BELOW: usize = 4096;
/// The fewest elements a task takes.
const LEAST_PER_TASK: usize = 2048;

/// `silu(gate) · up`, elementwise, for f32 tensors of one shape on the CPU. Bitwise candle's
/// `(gate.silu()? * up)?`.
pub fn silu_times(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    gate.apply_op2_no_bwd(up, &SiluTimes)
}

/// candle's `Silu` for f32, as candle writes it.
#[inline]
fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}

/// `out[i] = silu(gate[i]) · up[i]` over whole slices.
fn fill(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(g) * u;
    }
}

/// The op: one output buffer, chunks of it filled in parallel where there are enough elements.
struct SiluTimes;

impl CustomOp2 for SiluTimes {
    fn name(&self) -> &'static str {
        "modelqa-silu-times"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        us: &CpuStorage,
        ul: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (gs, us) else {
            bail!(
                "failed to run modelqa-silu-times: gate is {:?} and up {:?}, not both f32",
                gs.dtype(),
                us.dtype()
            );
        };
        if gl.dims() != ul.dims() {
            bail!(
                "failed to run modelqa-silu-times: gate {:?} and up {:?} differ in shape",
                gl.dims(),
                ul.dims()
            );
        }
        let (Some((ga, gb)), Some((ua, ub))) = (gl.contiguous_offsets(), ul.contiguous_offsets()) else {
            bail!("failed to run modelqa-silu-times: gate or up is not contiguous");
        };
        let (g, u) = (&g[ga..gb], &u[ua..ub]);
        let mut out = vec![0f32; g.len()];
        let threads = rayon::current_num_threads();
        if g.len() < SERIAL_BELOW || threads == 1 {
            fill(&mut out, g, u);
        } else {
            let per = g.len().div_ceil(threads).max(LEAST_PER_TASK);
            out.par_chunks_mut(per)
                .zip(g.par_chunks(per).zip(u.par_chunks(per)))
                .for_each(|(o, (g, u))| fill(o, g, u));
        }
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::silu_times;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap().into_iter().map(f32::to_bits).collect()
    }

    /// Values across silu's range: large negatives (exp overflows), zeros of both signs,
    /// subnormals, large positives, NaN and infinities.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0;
                match i % 97 {
                    0 => -0.0,
                    1 => f32::MIN_POSITIVE / 8.0,
                    2 => -120.0,
                    3 => 95.0,
                    4 => f32::INFINITY,
                    5 => f32::NEG_INFINITY,
                    6 => f32::NAN,
                    _ => r,
                }
            })
            .collect()
    }

    #[test]
    fn the_fused_op_gives_candles_bits_serial_and_split() {
        // Below and above the serial threshold, and a length no chunking divides evenly.
        for (rows, cols) in [(1, 512), (1, 4864), (3, 4864), (7, 1001)] {
            let g = Tensor::from_vec(values(rows * cols, 1), (rows, cols), &Device::Cpu).unwrap();
            let u = Tensor::from_vec(values(rows * cols, 2), (rows, cols), &Device::Cpu).unwrap();
            let want = (g.silu().unwrap() * &u).unwrap();
            let got = silu_times(&g, &u).unwrap();
            assert_eq!(got.dims(), want.dims());
            let first = bits(&got).iter().zip(bits(&want)).position(|(a, b)| *a != b);
            assert_eq!(first, None, "{rows} × {cols}: the first element whose bits differ");
        }
    }

    #[test]
    fn the_fused_op_refuses_what_it_cannot_take() {
        let g = Tensor::zeros((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let short = Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = silu_times(&g, &short).unwrap_err().to_string();
        assert!(err.contains("differ in shape"), "{err}");
        let wide = Tensor::zeros((8, 2), candle_core::DType::F32, &Device::Cpu).unwrap().t().unwrap();
        let err = silu_times(&g, &wide).unwrap_err().to_string();
        assert!(err.contains("not contiguous"), "{err}");
        let half = g.to_dtype(candle_core::DType::F16).unwrap();
        let err = silu_times(&half, &half).unwrap_err().to_string();
        assert!(err.contains("not both f32"), "{err}");
    }
}
