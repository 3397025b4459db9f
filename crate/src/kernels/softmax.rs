//! Softmax and LogSoftmax in place along the middle axis of an
//! `[outer, axis_len, inner]` view (ONNX opset 13 semantics: one axis).
//!
//! Contract:
//! - Numerically stable: the axis maximum is subtracted before `exp`, so no
//!   input overflows; a row whose maximum is ±inf or NaN gives NaN, as in
//!   onnxruntime.
//! - `inner == 1` (softmax over the last axis) works row by row with the
//!   shared `f32_rmax`/`f32_rsum` reductions (SIMD128 on wasm, lane order
//!   fixed so both paths agree bit for bit). `inner > 1` keeps `inner`
//!   running maxima and sums and updates them a whole row at a time, so the
//!   loops stay contiguous instead of striding along the axis.
//! - Softmax divides by the sum rather than multiplying by its reciprocal:
//!   one rounding fewer, and the division vectorises as well.
//!
//! Tests compare against an f64 reference on prime sizes, both layouts, and
//! extreme inputs.

use super::elementwise::{accumulate, f32_rmax, f32_rsum, BinaryOp};

/// Softmax of every `axis_len` run (stride `inner`) of `x`.
pub fn softmax(x: &mut [f32], outer: usize, axis_len: usize, inner: usize) {
    check(x, outer, axis_len, inner);
    if x.is_empty() {
        return;
    }
    if inner == 1 {
        for row in x.chunks_exact_mut(axis_len) {
            let max = f32_rmax(row);
            row.iter_mut().for_each(|v| *v = (*v - max).exp());
            let sum = f32_rsum(row);
            row.iter_mut().for_each(|v| *v /= sum);
        }
        return;
    }
    let (mut max, mut sum) = (vec![0.0; inner], vec![0.0; inner]);
    for block in x.chunks_exact_mut(axis_len * inner) {
        block_max(block, inner, &mut max);
        sum.fill(0.0);
        for row in block.chunks_exact_mut(inner) {
            row.iter_mut()
                .zip(&max)
                .for_each(|(v, m)| *v = (*v - m).exp());
            accumulate(BinaryOp::Add, &mut sum, row);
        }
        for row in block.chunks_exact_mut(inner) {
            row.iter_mut().zip(&sum).for_each(|(v, s)| *v /= s);
        }
    }
}

/// LogSoftmax, `x - max - ln(sum(exp(x - max)))`, of every `axis_len` run
/// (stride `inner`) of `x`.
pub fn log_softmax(x: &mut [f32], outer: usize, axis_len: usize, inner: usize) {
    check(x, outer, axis_len, inner);
    if x.is_empty() {
        return;
    }
    if inner == 1 {
        for row in x.chunks_exact_mut(axis_len) {
            let max = f32_rmax(row);
            row.iter_mut().for_each(|v| *v -= max);
            let log_sum = row.iter().fold(0.0f32, |acc, v| acc + v.exp()).ln();
            row.iter_mut().for_each(|v| *v -= log_sum);
        }
        return;
    }
    let (mut max, mut sum) = (vec![0.0; inner], vec![0.0f32; inner]);
    for block in x.chunks_exact_mut(axis_len * inner) {
        block_max(block, inner, &mut max);
        sum.fill(0.0);
        for row in block.chunks_exact_mut(inner) {
            for ((v, m), s) in row.iter_mut().zip(&max).zip(sum.iter_mut()) {
                *v -= m;
                *s += v.exp();
            }
        }
        sum.iter_mut().for_each(|s| *s = s.ln());
        for row in block.chunks_exact_mut(inner) {
            row.iter_mut().zip(&sum).for_each(|(v, l)| *v -= l);
        }
    }
}

fn check(x: &[f32], outer: usize, axis_len: usize, inner: usize) {
    assert_eq!(
        x.len(),
        outer * axis_len * inner,
        "softmax view does not match the buffer"
    );
}

/// The per-column maximum of a block of rows of `inner` elements.
fn block_max(block: &[f32], inner: usize, max: &mut [f32]) {
    max.fill(f32::NEG_INFINITY);
    for row in block.chunks_exact(inner) {
        accumulate(BinaryOp::Max, max, row);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;

    /// xorshift64*: deterministic and dependency-free.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn vec(&mut self, n: usize, range: f32) -> Vec<f32> {
            (0..n)
                .map(|_| ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * range)
                .collect()
        }
    }

    /// f64 softmax (or log-softmax) along the middle axis.
    fn naive(x: &[f32], outer: usize, axis_len: usize, inner: usize, log: bool) -> Vec<f64> {
        let mut out = vec![0.0; x.len()];
        for o in 0..outer {
            for j in 0..inner {
                let at = |i: usize| (o * axis_len + i) * inner + j;
                let max = (0..axis_len)
                    .map(|i| x[at(i)] as f64)
                    .fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = (0..axis_len).map(|i| (x[at(i)] as f64 - max).exp()).sum();
                for i in 0..axis_len {
                    let d = x[at(i)] as f64 - max;
                    out[at(i)] = if log { d - sum.ln() } else { d.exp() / sum };
                }
            }
        }
        out
    }

    #[test]
    fn matches_f64_reference_on_odd_shapes() {
        let mut rng = Rng(0xdead_beef);
        for (outer, axis_len, inner) in [
            (1, 1, 1),
            (3, 1, 5),
            (1, 7, 1),
            (5, 13, 1),
            (2, 1000, 1),
            (2, 5, 3),
            (3, 11, 17),
            (1, 4, 64),
        ] {
            for range in [1.0, 30.0, 200.0] {
                let x = rng.vec(outer * axis_len * inner, range);
                for log in [false, true] {
                    let mut y = x.clone();
                    if log {
                        log_softmax(&mut y, outer, axis_len, inner);
                    } else {
                        softmax(&mut y, outer, axis_len, inner);
                    }
                    let expected = naive(&x, outer, axis_len, inner, log);
                    for (i, (&got, &want)) in y.iter().zip(&expected).enumerate() {
                        let tolerance = if log {
                            2e-6 * want.abs().max(1.0)
                        } else {
                            1e-6 * want.max(1e-3)
                        };
                        assert!(
                            (got as f64 - want).abs() <= tolerance,
                            "log={log} [{outer},{axis_len},{inner}] range {range} at {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stable_on_extreme_inputs() {
        for inner in [1, 3] {
            let mut x: Vec<f32> = [1000.0, 1001.0, f32::NEG_INFINITY]
                .iter()
                .flat_map(|&v| vec![v; inner])
                .collect();
            softmax(&mut x, 1, 3, inner);
            let e = 1.0 / (1.0 + core::f64::consts::E);
            assert!(
                (x[0] as f64 - e).abs() < 1e-7 && (x[inner] as f64 - (1.0 - e)).abs() < 1e-7,
                "inner {inner}: {x:?}"
            );
            assert_eq!(x[2 * inner], 0.0);
            let mut x: Vec<f32> = [-1000.0f32, 0.0, 1000.0]
                .iter()
                .flat_map(|&v| vec![v; inner])
                .collect();
            log_softmax(&mut x, 1, 3, inner);
            assert_eq!((x[0], x[inner], x[2 * inner]), (-2000.0, -1000.0, 0.0));
        }
        let mut x = [f32::INFINITY, 1.0];
        softmax(&mut x, 1, 2, 1);
        assert!(x[0].is_nan());
        let mut x: [f32; 0] = [];
        softmax(&mut x, 0, 5, 3);
    }
}
