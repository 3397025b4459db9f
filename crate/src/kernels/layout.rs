//! Data movement: Transpose, Pad, Slice, Concat, Split, Gather.
//!
//! Contract:
//! - Dense row-major tensors of any `T: Copy`: the engine calls these on f32,
//!   the importer on i64 shape tensors while constant folding. Nothing is
//!   computed, so every path is exact.
//! - Inputs are validated with assertions (shape/length mismatches,
//!   out-of-range indices panic with a message); ONNX-level normalisation
//!   (negative axes, ONNX starts/ends, negative pads) is the caller's.
//! - `transpose` first drops size-1 axes and merges axes that stay adjacent
//!   and in order, so NCHW<->NHWC becomes a batch of 2-D transposes, done in
//!   cache-sized tiles; other permutations walk the output with a strided
//!   innermost read.
//!
//! Tests compare every function against index-by-index references on random
//! shapes with size-1 axes, every permutation of rank <= 4, every pad mode
//! and negative steps and indices.

/// ONNX Pad `mode`. `T` defaults to f32; the importer folds i64 tensors.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PadMode<T = f32> {
    Constant(T),
    /// Mirror without repeating the edge: `[a b c]` -> `c b | a b c | b a`.
    Reflect,
    /// Repeat the edge: `[a b c]` -> `a a | a b c | c c`.
    Edge,
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        strides[a] = strides[a + 1] * shape[a + 1];
    }
    strides
}

/// `out = x.transpose(perm)`: output axis `k` is input axis `perm[k]`.
pub fn transpose<T: Copy>(x: &[T], shape: &[usize], perm: &[usize], out: &mut [T]) {
    let rank = shape.len();
    assert_eq!(perm.len(), rank, "perm does not match the rank");
    assert!(
        (0..rank).all(|a| perm.contains(&a)),
        "perm {perm:?} is not a permutation"
    );
    assert_eq!(
        x.len(),
        shape.iter().product::<usize>(),
        "x does not match shape"
    );
    assert_eq!(out.len(), x.len(), "out does not match x");
    if x.is_empty() {
        return;
    }
    let (shape, perm) = simplify_transpose(shape, perm);
    match perm.as_slice() {
        [] | [0] => out.copy_from_slice(x),
        [1, 0] => transpose_2d(x, shape[0], shape[1], out),
        [0, 2, 1] => {
            let plane = shape[1] * shape[2];
            for (src, dst) in x.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
                transpose_2d(src, shape[1], shape[2], dst);
            }
        }
        _ => transpose_strided(x, &shape, &perm, out),
    }
}

/// The smallest equivalent transpose: size-1 axes dropped, and input axes
/// that stay adjacent and in order in the output merged into one.
fn simplify_transpose(shape: &[usize], perm: &[usize]) -> (Vec<usize>, Vec<usize>) {
    // Renumber the axes that remain after dropping size-1 ones.
    let kept: Vec<usize> = (0..shape.len()).filter(|&a| shape[a] != 1).collect();
    let perm: Vec<usize> = perm
        .iter()
        .filter_map(|p| kept.iter().position(|k| k == p))
        .collect();
    let shape: Vec<usize> = kept.iter().map(|&a| shape[a]).collect();
    // Runs of consecutive input axes in output order become one axis.
    let mut runs: Vec<(usize, usize)> = Vec::new(); // (first input axis, last input axis)
    for &p in &perm {
        match runs.last_mut() {
            Some(run) if run.1 + 1 == p => run.1 = p,
            _ => runs.push((p, p)),
        }
    }
    let mut by_input: Vec<usize> = (0..runs.len()).collect();
    by_input.sort_by_key(|&r| runs[r].0);
    let merged_shape = by_input
        .iter()
        .map(|&r| shape[runs[r].0..=runs[r].1].iter().product())
        .collect();
    let merged_perm = (0..runs.len())
        .map(|r| by_input.iter().position(|&b| b == r).unwrap())
        .collect();
    (merged_shape, merged_perm)
}

/// `out[c][r] = x[r][c]` for an `rows x cols` matrix, in square tiles so
/// both the reads and the writes stay within a few cache lines.
fn transpose_2d<T: Copy>(x: &[T], rows: usize, cols: usize, out: &mut [T]) {
    const TILE: usize = 16;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for c in c0..(c0 + TILE).min(cols) {
                let dst = &mut out[c * rows..][r0..(r0 + TILE).min(rows)];
                for (r, d) in (r0..).zip(dst) {
                    *d = x[r * cols + c];
                }
            }
        }
    }
}

/// General transpose: walk the output in order, reading the input through
/// permuted strides.
fn transpose_strided<T: Copy>(x: &[T], shape: &[usize], perm: &[usize], out: &mut [T]) {
    let in_strides = strides(shape);
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let read_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let rank = perm.len();
    let (len, step) = (out_shape[rank - 1], read_strides[rank - 1]);
    let mut index = vec![0usize; rank - 1];
    let mut at = 0;
    for row in out.chunks_exact_mut(len) {
        for (k, o) in row.iter_mut().enumerate() {
            *o = x[at + k * step];
        }
        for d in (0..rank - 1).rev() {
            index[d] += 1;
            at += read_strides[d];
            if index[d] < out_shape[d] {
                break;
            }
            index[d] = 0;
            at -= read_strides[d] * out_shape[d];
        }
    }
}

/// Pads every axis `a` with `pads_begin[a]` elements before and
/// `pads_end[a]` after. Reflect and Edge need a non-empty axis wherever they
/// pad; Reflect wider than the axis keeps mirroring (numpy's behaviour).
pub fn pad<T: Copy>(
    x: &[T],
    shape: &[usize],
    pads_begin: &[usize],
    pads_end: &[usize],
    mode: PadMode<T>,
    out: &mut [T],
) {
    let rank = shape.len();
    assert!(
        pads_begin.len() == rank && pads_end.len() == rank,
        "pads do not match the rank"
    );
    assert_eq!(
        x.len(),
        shape.iter().product::<usize>(),
        "x does not match shape"
    );
    let out_shape: Vec<usize> = (0..rank)
        .map(|a| shape[a] + pads_begin[a] + pads_end[a])
        .collect();
    assert_eq!(
        out.len(),
        out_shape.iter().product::<usize>(),
        "out does not match the padded shape"
    );
    if out.is_empty() {
        return;
    }
    // Per axis, the source index of each output index (None: the constant).
    let maps: Vec<Vec<Option<usize>>> = (0..rank)
        .map(|a| {
            let (n, begin) = (shape[a] as isize, pads_begin[a] as isize);
            if !matches!(mode, PadMode::Constant(_)) && out_shape[a] != shape[a] {
                assert!(n > 0, "reflect or edge padding of empty axis {a}");
            }
            (0..out_shape[a] as isize)
                .map(|o| {
                    let i = o - begin;
                    match mode {
                        _ if (0..n).contains(&i) => Some(i as usize),
                        PadMode::Constant(_) => None,
                        PadMode::Edge => Some(i.clamp(0, n - 1) as usize),
                        PadMode::Reflect if n == 1 => Some(0),
                        PadMode::Reflect => {
                            let period = 2 * (n - 1);
                            let m = i.rem_euclid(period);
                            Some(if m < n { m } else { period - m } as usize)
                        }
                    }
                })
                .collect()
        })
        .collect();
    let fill = match mode {
        PadMode::Constant(v) => Some(v),
        _ => None,
    };
    pad_axis(x, &strides(shape), &maps, fill, 0, 0, out);
}

/// Fills `out`, the output block of axes `axis..`, reading from offset `at`.
fn pad_axis<T: Copy>(
    x: &[T],
    in_strides: &[usize],
    maps: &[Vec<Option<usize>>],
    fill: Option<T>,
    axis: usize,
    at: usize,
    out: &mut [T],
) {
    let map = &maps[axis];
    let value = |source: Option<usize>| {
        source.map_or_else(
            || fill.expect("only constant padding has unmapped indices"),
            |i| x[at + i],
        )
    };
    if axis + 1 == maps.len() {
        return out.iter_mut().zip(map).for_each(|(o, &m)| *o = value(m));
    }
    let chunk = out.len() / map.len();
    for (dst, &m) in out.chunks_exact_mut(chunk).zip(map) {
        match m {
            Some(i) => pad_axis(
                x,
                in_strides,
                maps,
                fill,
                axis + 1,
                at + i * in_strides[axis],
                dst,
            ),
            None => dst.fill(value(None)),
        }
    }
}

/// `out[o] = x[starts + o * steps]` per axis, for `out_shape`; steps may be
/// negative. Every index read must be inside `shape`.
pub fn slice<T: Copy>(
    x: &[T],
    shape: &[usize],
    starts: &[usize],
    steps: &[isize],
    out: &mut [T],
    out_shape: &[usize],
) {
    let rank = shape.len();
    assert!(
        starts.len() == rank && steps.len() == rank && out_shape.len() == rank,
        "slice parameters do not match the rank"
    );
    assert_eq!(
        x.len(),
        shape.iter().product::<usize>(),
        "x does not match shape"
    );
    assert_eq!(
        out.len(),
        out_shape.iter().product::<usize>(),
        "out does not match out_shape"
    );
    if out.is_empty() {
        return;
    }
    for a in 0..rank {
        let last = starts[a] as isize + (out_shape[a] as isize - 1) * steps[a];
        assert!(
            starts[a] < shape[a] && (0..shape[a] as isize).contains(&last),
            "slice of axis {a} reads outside 0..{}: start {}, step {}, count {}",
            shape[a],
            starts[a],
            steps[a],
            out_shape[a]
        );
    }
    slice_axis(x, &strides(shape), starts, steps, out_shape, 0, 0, out);
}

#[allow(clippy::too_many_arguments)]
fn slice_axis<T: Copy>(
    x: &[T],
    in_strides: &[usize],
    starts: &[usize],
    steps: &[isize],
    out_shape: &[usize],
    axis: usize,
    at: usize,
    out: &mut [T],
) {
    let (start, step, stride) = (
        starts[axis] as isize,
        steps[axis],
        in_strides[axis] as isize,
    );
    let source = |o: usize| (at as isize + (start + o as isize * step) * stride) as usize;
    if axis + 1 == out_shape.len() {
        if step == 1 {
            let first = source(0);
            return out.copy_from_slice(&x[first..first + out.len()]);
        }
        return out
            .iter_mut()
            .enumerate()
            .for_each(|(o, v)| *v = x[source(o)]);
    }
    let chunk = out.len() / out_shape[axis];
    for (o, dst) in out.chunks_exact_mut(chunk).enumerate() {
        slice_axis(
            x,
            in_strides,
            starts,
            steps,
            out_shape,
            axis + 1,
            source(o),
            dst,
        );
    }
}

/// Concatenates `(data, shape)` inputs along `axis`; all shapes agree
/// elsewhere.
pub fn concat<T: Copy>(inputs: &[(&[T], &[usize])], axis: usize, out: &mut [T]) {
    let Some(&(_, first)) = inputs.first() else {
        return assert!(out.is_empty(), "concat of no inputs");
    };
    assert!(axis < first.len(), "concat axis {axis} out of range");
    for (data, shape) in inputs {
        assert!(
            shape.len() == first.len()
                && (0..first.len()).all(|a| a == axis || shape[a] == first[a]),
            "concat shapes {shape:?} and {first:?} differ off axis {axis}"
        );
        assert_eq!(
            data.len(),
            shape.iter().product::<usize>(),
            "concat input does not match its shape"
        );
    }
    assert_eq!(
        out.len(),
        inputs.iter().map(|(d, _)| d.len()).sum::<usize>(),
        "out does not match the concatenation"
    );
    let outer: usize = first[..axis].iter().product();
    let mut at = 0;
    for o in 0..outer {
        for (data, shape) in inputs {
            let block: usize = shape[axis..].iter().product();
            out[at..at + block].copy_from_slice(&data[o * block..][..block]);
            at += block;
        }
    }
}

/// Splits `x` along `axis` into pieces of `sizes[k]`, the inverse of `concat`.
pub fn split<T: Copy>(
    x: &[T],
    shape: &[usize],
    axis: usize,
    sizes: &[usize],
    outs: &mut [&mut [T]],
) {
    assert!(axis < shape.len(), "split axis {axis} out of range");
    assert_eq!(
        x.len(),
        shape.iter().product::<usize>(),
        "x does not match shape"
    );
    assert_eq!(
        sizes.iter().sum::<usize>(),
        shape[axis],
        "split sizes do not cover the axis"
    );
    assert_eq!(sizes.len(), outs.len(), "one output per split size");
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    for (out, &size) in outs.iter().zip(sizes) {
        assert_eq!(
            out.len(),
            outer * size * inner,
            "split output does not match its size"
        );
    }
    let mut at = 0;
    for o in 0..outer {
        for (out, &size) in outs.iter_mut().zip(sizes) {
            let block = size * inner;
            out[o * block..][..block].copy_from_slice(&x[at..at + block]);
            at += block;
        }
    }
}

/// ONNX Gather: `out[o, k, i] = x[o, indices[k], i]` around `axis`, with
/// negative indices counted from the end. The caller shapes `out` as
/// `shape[..axis] ++ indices_shape ++ shape[axis + 1..]`.
pub fn gather<T: Copy>(x: &[T], shape: &[usize], axis: usize, indices: &[i64], out: &mut [T]) {
    assert!(axis < shape.len(), "gather axis {axis} out of range");
    assert_eq!(
        x.len(),
        shape.iter().product::<usize>(),
        "x does not match shape"
    );
    let n = shape[axis];
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis + 1..].iter().product();
    assert_eq!(
        out.len(),
        outer * indices.len() * inner,
        "out does not match the gathered shape"
    );
    let rows: Vec<usize> = indices
        .iter()
        .map(|&i| {
            let wrapped = if i < 0 { i + n as i64 } else { i };
            assert!(
                (0..n as i64).contains(&wrapped),
                "gather index {i} out of range for axis of {n}"
            );
            wrapped as usize
        })
        .collect();
    if out.is_empty() {
        return;
    }
    for (o, dst) in out.chunks_exact_mut(indices.len() * inner).enumerate() {
        for (d, &r) in dst.chunks_exact_mut(inner).zip(&rows) {
            d.copy_from_slice(&x[(o * n + r) * inner..][..inner]);
        }
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
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn shape(&mut self, rank: usize) -> Vec<usize> {
            (0..rank)
                .map(|_| [1, 2, 3, 4, 5, 7][self.below(6)])
                .collect()
        }
    }

    fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
        let mut index = vec![0; shape.len()];
        for a in (0..shape.len()).rev() {
            index[a] = flat % shape[a];
            flat /= shape[a];
        }
        index
    }

    fn ravel(index: &[usize], shape: &[usize]) -> usize {
        index.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + i)
    }

    /// Every permutation of 0..n, by Heap's algorithm.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        fn heap(k: usize, p: &mut Vec<usize>, all: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                return all.push(p.clone());
            }
            for i in 0..k {
                heap(k - 1, p, all);
                p.swap(if k & 1 == 0 { i } else { 0 }, k - 1);
            }
        }
        let mut all = Vec::new();
        heap(n, &mut (0..n).collect(), &mut all);
        all
    }

    fn naive_transpose(x: &[i64], shape: &[usize], perm: &[usize]) -> Vec<i64> {
        let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
        (0..x.len())
            .map(|flat| {
                let o = unravel(flat, &out_shape);
                let mut i = vec![0; shape.len()];
                for (k, &p) in perm.iter().enumerate() {
                    i[p] = o[k];
                }
                x[ravel(&i, shape)]
            })
            .collect()
    }

    #[test]
    fn transpose_matches_naive_for_every_permutation() {
        let mut rng = Rng(0x7ea5_e1ec);
        for rank in 0..=4 {
            for perm in permutations(rank) {
                for _ in 0..20 {
                    let shape = rng.shape(rank);
                    let x: Vec<i64> = (0..shape.iter().product::<usize>() as i64).collect();
                    let mut out = vec![-1; x.len()];
                    transpose(&x, &shape, &perm, &mut out);
                    assert_eq!(
                        out,
                        naive_transpose(&x, &shape, &perm),
                        "{shape:?} perm {perm:?}"
                    );
                }
            }
        }
        // Rank 6, and the NCHW<->NHWC tiles on sizes around the tile width.
        let x: Vec<i64> = (0..240).collect();
        let mut out = vec![0; x.len()];
        transpose(&x, &[2, 3, 1, 4, 5, 2], &[5, 3, 0, 2, 4, 1], &mut out);
        assert_eq!(
            out,
            naive_transpose(&x, &[2, 3, 1, 4, 5, 2], &[5, 3, 0, 2, 4, 1])
        );
        for (c, hw) in [(3, 17 * 15), (16, 16), (33, 31), (1, 7)] {
            let shape = [2, c, hw];
            let x: Vec<f32> = (0..2 * c * hw).map(|v| v as f32).collect();
            for perm in [[0, 2, 1], [1, 0, 2], [2, 1, 0]] {
                let mut out = vec![0.0; x.len()];
                transpose(&x, &shape, &perm, &mut out);
                let ints: Vec<i64> = x.iter().map(|&v| v as i64).collect();
                let want: Vec<f32> = naive_transpose(&ints, &shape, &perm)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                assert_eq!(out, want, "{shape:?} {perm:?}");
            }
        }
    }

    fn naive_pad(
        x: &[i64],
        shape: &[usize],
        begin: &[usize],
        end: &[usize],
        mode: PadMode<i64>,
    ) -> Vec<i64> {
        let out_shape: Vec<usize> = (0..shape.len())
            .map(|a| shape[a] + begin[a] + end[a])
            .collect();
        (0..out_shape.iter().product())
            .map(|flat| {
                let o = unravel(flat, &out_shape);
                let mut i = vec![0; shape.len()];
                for a in 0..shape.len() {
                    let (p, n) = (o[a] as isize - begin[a] as isize, shape[a] as isize);
                    i[a] = match mode {
                        _ if (0..n).contains(&p) => p,
                        PadMode::Constant(v) => return v,
                        PadMode::Edge => p.clamp(0, n - 1),
                        PadMode::Reflect if p < 0 => -p,
                        PadMode::Reflect => 2 * (n - 1) - p,
                    } as usize;
                }
                x[ravel(&i, shape)]
            })
            .collect()
    }

    #[test]
    fn pad_matches_naive_in_every_mode() {
        let mut rng = Rng(41);
        for case in 0..600 {
            let rank = 1 + rng.below(4);
            let shape = rng.shape(rank);
            let mode = [PadMode::Constant(-7), PadMode::Reflect, PadMode::Edge][case % 3];
            // Reflect pads stay below the axis length, as ONNX requires.
            let mut pad_for = |n: usize| {
                if mode == PadMode::Reflect {
                    rng.below(n)
                } else {
                    rng.below(4)
                }
            };
            let begin: Vec<usize> = shape.iter().map(|&n| pad_for(n)).collect();
            let end: Vec<usize> = shape.iter().map(|&n| pad_for(n)).collect();
            let x: Vec<i64> = (0..shape.iter().product::<usize>() as i64).collect();
            let want = naive_pad(&x, &shape, &begin, &end, mode);
            let mut out = vec![0; want.len()];
            pad(&x, &shape, &begin, &end, mode, &mut out);
            assert_eq!(out, want, "{mode:?} {shape:?} {begin:?} {end:?}");
        }
        // f32 with the default type, and reflection wider than the axis.
        let mut out = [0.0f32; 9];
        pad(
            &[1.0, 2.0, 3.0],
            &[3],
            &[3],
            &[3],
            PadMode::Reflect,
            &mut out,
        );
        assert_eq!(out, [2.0, 3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0, 2.0]);
        let mut out = [0.0f32; 4];
        pad(&[], &[0], &[1], &[3], PadMode::Constant(0.5), &mut out);
        assert_eq!(out, [0.5; 4]);
    }

    #[test]
    fn slice_matches_naive_with_negative_steps() {
        let mut rng = Rng(5);
        for _ in 0..800 {
            let rank = 1 + rng.below(4);
            let shape = rng.shape(rank);
            let mut starts = vec![0; rank];
            let mut steps = vec![0isize; rank];
            let mut out_shape = vec![0; rank];
            for a in 0..rank {
                starts[a] = rng.below(shape[a]);
                steps[a] = [1, 2, 3, -1, -2][rng.below(5)];
                let room = if steps[a] > 0 {
                    shape[a] - 1 - starts[a]
                } else {
                    starts[a]
                };
                out_shape[a] = rng.below(room / steps[a].unsigned_abs() + 1) + 1;
            }
            let x: Vec<i64> = (0..shape.iter().product::<usize>() as i64).collect();
            let want: Vec<i64> = (0..out_shape.iter().product())
                .map(|flat| {
                    let o = unravel(flat, &out_shape);
                    let i: Vec<usize> = (0..rank)
                        .map(|a| (starts[a] as isize + o[a] as isize * steps[a]) as usize)
                        .collect();
                    x[ravel(&i, &shape)]
                })
                .collect();
            let mut out = vec![0; want.len()];
            slice(&x, &shape, &starts, &steps, &mut out, &out_shape);
            assert_eq!(
                out, want,
                "{shape:?} starts {starts:?} steps {steps:?} -> {out_shape:?}"
            );
        }
        let mut out: [f32; 0] = [];
        slice(&[1.0, 2.0], &[2], &[0], &[1], &mut out, &[0]);
    }

    #[test]
    fn concat_and_split_are_inverse_and_match_naive() {
        let mut rng = Rng(8);
        for _ in 0..300 {
            let rank = 1 + rng.below(4);
            let axis = rng.below(rank);
            let base = rng.shape(rank);
            let sizes: Vec<usize> = (0..1 + rng.below(4)).map(|_| rng.below(4)).collect();
            let shapes: Vec<Vec<usize>> = sizes
                .iter()
                .map(|&s| {
                    (0..rank)
                        .map(|a| if a == axis { s } else { base[a] })
                        .collect()
                })
                .collect();
            let mut next = 0i64;
            let parts: Vec<Vec<i64>> = shapes
                .iter()
                .map(|s| {
                    (0..s.iter().product::<usize>())
                        .map(|_| {
                            next += 1;
                            next
                        })
                        .collect()
                })
                .collect();
            let mut out_shape = base.clone();
            out_shape[axis] = sizes.iter().sum();
            // Naive: each output index belongs to the part its axis index falls in.
            let want: Vec<i64> = (0..out_shape.iter().product())
                .map(|flat| {
                    let mut index = unravel(flat, &out_shape);
                    let mut k = 0;
                    while index[axis] >= sizes[k] {
                        index[axis] -= sizes[k];
                        k += 1;
                    }
                    parts[k][ravel(&index, &shapes[k])]
                })
                .collect();
            let inputs: Vec<(&[i64], &[usize])> = parts
                .iter()
                .zip(&shapes)
                .map(|(p, s)| (p.as_slice(), s.as_slice()))
                .collect();
            let mut out = vec![0; want.len()];
            concat(&inputs, axis, &mut out);
            assert_eq!(out, want, "concat {shapes:?} on {axis}");
            let mut pieces: Vec<Vec<i64>> = parts.iter().map(|p| vec![0; p.len()]).collect();
            let mut outs: Vec<&mut [i64]> = pieces.iter_mut().map(|p| p.as_mut_slice()).collect();
            split(&out, &out_shape, axis, &sizes, &mut outs);
            assert_eq!(
                pieces, parts,
                "split {out_shape:?} on {axis} into {sizes:?}"
            );
        }
    }

    #[test]
    fn gather_wraps_negative_indices() {
        let mut rng = Rng(13);
        for _ in 0..300 {
            let rank = 1 + rng.below(4);
            let shape = rng.shape(rank);
            let axis = rng.below(rank);
            let n = shape[axis] as i64;
            let indices: Vec<i64> = (0..rng.below(5))
                .map(|_| rng.below(2 * n as usize) as i64 - n)
                .collect();
            let x: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|v| v as f32)
                .collect();
            let mut out_shape = shape.clone();
            out_shape[axis] = indices.len();
            let want: Vec<f32> = (0..out_shape.iter().product())
                .map(|flat| {
                    let mut index = unravel(flat, &out_shape);
                    index[axis] = indices[index[axis]].rem_euclid(n) as usize;
                    x[ravel(&index, &shape)]
                })
                .collect();
            let mut out = vec![0.0; want.len()];
            gather(&x, &shape, axis, &indices, &mut out);
            assert_eq!(out, want, "{shape:?} axis {axis} indices {indices:?}");
        }
        // Scalar index on an i64 shape tensor, as constant folding does.
        let mut out = [0i64];
        gather(&[1, 3, 224, 224], &[4], 0, &[-3], &mut out);
        assert_eq!(out, [3]);
    }
}
