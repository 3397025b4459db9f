//! Elementwise kernels: binary ops with ONNX (numpy) multidirectional
//! broadcasting, unary ops in place, PReLU, and the f32 slice reductions
//! (`f32_rsum`, `f32_rmax`) that pooling and softmax share.
//!
//! Contract:
//! - Tensors are dense row-major f32 slices; shapes are right-aligned for
//!   broadcasting and ranks may differ (rank 0 is a scalar of one element).
//! - `binary` walks the output as a sequence of contiguous innermost runs
//!   after dropping size-1 output axes and merging axes that stay contiguous
//!   in both inputs. Each run is one of: both operands contiguous, `a`
//!   contiguous with `b` repeated, or `a` repeated with `b` contiguous. So
//!   NCHW + [C,1,1] becomes C runs of H*W with a constant bias.
//! - Every vector path computes exactly `BinaryOp::apply_scalar` per element
//!   (no fma, no reassociation): SIMD128 and scalar results are equal bit for
//!   bit. `Max`/`Min` are defined as wasm's `f32x4.pmax`/`pmin`
//!   (`if a < b { b } else { a }`), which is also what `maxps`/`minps` and
//!   onnxruntime's pooling compute: a NaN in `a` propagates, a NaN in `b` is
//!   dropped.
//! - `f32_rsum` sums in four interleaved lanes combined as `(l0 + l1) + (l2 +
//!   l3)`, then the tail in order, on every target, so the SIMD128 and
//!   scalar sums are equal bit for bit.
//!
//! Tests compare against naive index-by-index references on random shapes of
//! rank 0..5 with size-1 axes mixed in, including every broadcast pattern.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use core::arch::wasm32::*;

/// A binary elementwise operator (ONNX Add, Sub, Mul, Div, Max, Min, Pow).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
}

/// One operator as a pair of scalar and SIMD128 definitions, so every loop is
/// monomorphised per operator instead of matching per element.
trait BinaryKernel {
    fn scalar(a: f32, b: f32) -> f32;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    fn simd128(a: v128, b: v128) -> v128;
}

struct AddKernel;
struct SubKernel;
struct MulKernel;
struct DivKernel;
struct MaxKernel;
struct MinKernel;
struct PowKernel;

impl BinaryKernel for AddKernel {
    #[inline(always)]
    fn scalar(a: f32, b: f32) -> f32 {
        a + b
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd128(a: v128, b: v128) -> v128 {
        f32x4_add(a, b)
    }
}

impl BinaryKernel for SubKernel {
    #[inline(always)]
    fn scalar(a: f32, b: f32) -> f32 {
        a - b
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd128(a: v128, b: v128) -> v128 {
        f32x4_sub(a, b)
    }
}

impl BinaryKernel for MulKernel {
    #[inline(always)]
    fn scalar(a: f32, b: f32) -> f32 {
        a * b
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd128(a: v128, b: v128) -> v128 {
        f32x4_mul(a, b)
    }
}

impl BinaryKernel for DivKernel {
    #[inline(always)]
    fn scalar(a: f32, b: f32) -> f32 {
        a / b
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd128(a: v128, b: v128) -> v128 {
        f32x4_div(a, b)
    }
}

impl BinaryKernel for MaxKernel {
    #[inline(always)]
    fn scalar(a: f32, b: f32) -> f32 {
        pmax(a, b)
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd128(a: v128, b: v128) -> v128 {
        f32x4_pmax(a, b)
    }
}

impl BinaryKernel for MinKernel {
    #[inline(always)]
    fn scalar(a: f32, b: f32) -> f32 {
        if b < a {
            b
        } else {
            a
        }
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd128(a: v128, b: v128) -> v128 {
        f32x4_pmin(a, b)
    }
}

impl BinaryKernel for PowKernel {
    #[inline(always)]
    fn scalar(a: f32, b: f32) -> f32 {
        a.powf(b)
    }
    // There is no vector pow; going lane by lane keeps the run loops uniform.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[inline(always)]
    fn simd128(a: v128, b: v128) -> v128 {
        f32x4(
            f32x4_extract_lane::<0>(a).powf(f32x4_extract_lane::<0>(b)),
            f32x4_extract_lane::<1>(a).powf(f32x4_extract_lane::<1>(b)),
            f32x4_extract_lane::<2>(a).powf(f32x4_extract_lane::<2>(b)),
            f32x4_extract_lane::<3>(a).powf(f32x4_extract_lane::<3>(b)),
        )
    }
}

/// `max` as wasm `f32x4.pmax` defines it: `b` if `a < b`, else `a`.
#[inline(always)]
pub(crate) fn pmax(a: f32, b: f32) -> f32 {
    if a < b {
        b
    } else {
        a
    }
}

/// Runs `$body` with `$k` bound to the kernel type of `$op`.
macro_rules! with_binary_kernel {
    ($op:expr, $k:ident => $body:expr) => {
        match $op {
            BinaryOp::Add => {
                type $k = AddKernel;
                $body
            }
            BinaryOp::Sub => {
                type $k = SubKernel;
                $body
            }
            BinaryOp::Mul => {
                type $k = MulKernel;
                $body
            }
            BinaryOp::Div => {
                type $k = DivKernel;
                $body
            }
            BinaryOp::Max => {
                type $k = MaxKernel;
                $body
            }
            BinaryOp::Min => {
                type $k = MinKernel;
                $body
            }
            BinaryOp::Pow => {
                type $k = PowKernel;
                $body
            }
        }
    };
}

impl BinaryOp {
    /// The operator on one pair of values; the definition every path matches.
    #[inline(always)]
    pub fn apply_scalar(self, a: f32, b: f32) -> f32 {
        with_binary_kernel!(self, K => K::scalar(a, b))
    }
}

/// The ONNX (numpy) multidirectional broadcast of two shapes, or `None` when
/// some right-aligned pair of axes differs and neither is 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    (0..rank)
        .map(|i| {
            let da = aligned_dim(a, rank, i);
            let db = aligned_dim(b, rank, i);
            match (da, db) {
                _ if da == db => Some(da),
                (1, _) => Some(db),
                (_, 1) => Some(da),
                _ => None,
            }
        })
        .collect()
}

/// Axis `i` of `shape` right-aligned to `rank` axes (missing leading axes are 1).
fn aligned_dim(shape: &[usize], rank: usize, i: usize) -> usize {
    let lead = rank - shape.len();
    if i < lead {
        1
    } else {
        shape[i - lead]
    }
}

/// `out = op(a, b)` with `out_shape == broadcast_shape(a_shape, b_shape)`.
pub fn binary(
    op: BinaryOp,
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
) {
    assert_eq!(
        a.len(),
        a_shape.iter().product::<usize>(),
        "a does not match a_shape"
    );
    assert_eq!(
        b.len(),
        b_shape.iter().product::<usize>(),
        "b does not match b_shape"
    );
    assert_eq!(
        out.len(),
        out_shape.iter().product::<usize>(),
        "out does not match out_shape"
    );
    debug_assert_eq!(
        broadcast_shape(a_shape, b_shape).as_deref(),
        Some(out_shape)
    );
    with_binary_kernel!(op, K => binary_with::<K>(a, a_shape, b, b_shape, out, out_shape))
}

fn binary_with<K: BinaryKernel>(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out: &mut [f32],
    out_shape: &[usize],
) {
    // Equal element counts under a valid broadcast imply equal shapes up to
    // size-1 axes, hence the same element order.
    if a.len() == out.len() && b.len() == out.len() {
        return map_vv::<K>(a, b, out);
    }
    if b.len() == 1 && a.len() == out.len() {
        return map_vs::<K>(a, b[0], out);
    }
    if a.len() == 1 && b.len() == out.len() {
        return map_sv::<K>(a[0], b, out);
    }
    for_each_run(a_shape, b_shape, out_shape, |run| {
        let o = &mut out[run.out..run.out + run.len];
        match (run.a_contiguous, run.b_contiguous) {
            (true, true) => map_vv::<K>(&a[run.a..run.a + run.len], &b[run.b..run.b + run.len], o),
            (true, false) => map_vs::<K>(&a[run.a..run.a + run.len], b[run.b], o),
            // Merging never leaves both operands repeated along the innermost
            // axis: that axis has size > 1 in the output, so in one input too.
            _ => map_sv::<K>(a[run.a], &b[run.b..run.b + run.len], o),
        }
    });
}

/// One innermost run of a broadcast walk: `len` outputs from offset `out`;
/// each operand is read from its offset either contiguously or as one
/// repeated element.
struct Run {
    out: usize,
    a: usize,
    b: usize,
    len: usize,
    a_contiguous: bool,
    b_contiguous: bool,
}

/// Calls `f` for every innermost run of broadcasting `a_shape` and `b_shape`
/// to `out_shape`, in output order.
fn for_each_run(a_shape: &[usize], b_shape: &[usize], out_shape: &[usize], mut f: impl FnMut(Run)) {
    if out_shape.contains(&0) {
        return;
    }
    let rank = out_shape.len();
    // (size, a stride, b stride) per output axis, outermost first; a stride is
    // 0 where that input is broadcast.
    let mut axes: Vec<(usize, usize, usize)> = Vec::with_capacity(rank);
    let (mut sa, mut sb) = (1usize, 1usize);
    for i in (0..rank).rev() {
        let (da, db, n) = (
            aligned_dim(a_shape, rank, i),
            aligned_dim(b_shape, rank, i),
            out_shape[i],
        );
        if n > 1 {
            let axis = (
                n,
                if da == 1 { 0 } else { sa },
                if db == 1 { 0 } else { sb },
            );
            match axes.last_mut() {
                // Merge into the inner neighbour when both inputs continue
                // its stride pattern (zero strides merge with zero strides).
                Some(inner) if axis.1 == inner.1 * inner.0 && axis.2 == inner.2 * inner.0 => {
                    inner.0 *= n
                }
                _ => axes.push(axis),
            }
        }
        sa *= da;
        sb *= db;
    }
    axes.reverse();
    let Some(&(len, a_inner, b_inner)) = axes.last() else {
        // Every axis has size 1: a single element.
        return f(Run {
            out: 0,
            a: 0,
            b: 0,
            len: 1,
            a_contiguous: true,
            b_contiguous: true,
        });
    };
    let outer = &axes[..axes.len() - 1];
    let mut index = vec![0usize; outer.len()];
    let (mut oa, mut ob, mut oo) = (0usize, 0usize, 0usize);
    loop {
        f(Run {
            out: oo,
            a: oa,
            b: ob,
            len,
            a_contiguous: a_inner != 0,
            b_contiguous: b_inner != 0,
        });
        oo += len;
        // Odometer over the outer axes, innermost first.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            let (n, stride_a, stride_b) = outer[d];
            index[d] += 1;
            oa += stride_a;
            ob += stride_b;
            if index[d] < n {
                break;
            }
            index[d] = 0;
            oa -= stride_a * n;
            ob -= stride_b * n;
        }
    }
}

/// `out[i] = K(a[i], b[i])`.
#[inline(always)]
fn map_vv<K: BinaryKernel>(a: &[f32], b: &[f32], out: &mut [f32]) {
    assert!(a.len() == out.len() && b.len() == out.len());
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = {
        let n = out.len() & !3;
        for i in (0..n).step_by(4) {
            // SAFETY: i + 4 <= n <= the length of all three slices.
            unsafe {
                let va = v128_load(a.as_ptr().add(i) as *const v128);
                let vb = v128_load(b.as_ptr().add(i) as *const v128);
                v128_store(out.as_mut_ptr().add(i) as *mut v128, K::simd128(va, vb));
            }
        }
        n
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for ((o, &x), &y) in out[done..].iter_mut().zip(&a[done..]).zip(&b[done..]) {
        *o = K::scalar(x, y);
    }
}

/// `out[i] = K(a[i], b)`.
#[inline(always)]
fn map_vs<K: BinaryKernel>(a: &[f32], b: f32, out: &mut [f32]) {
    assert_eq!(a.len(), out.len());
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = {
        let n = out.len() & !3;
        let vb = f32x4_splat(b);
        for i in (0..n).step_by(4) {
            // SAFETY: i + 4 <= n <= the length of both slices.
            unsafe {
                let va = v128_load(a.as_ptr().add(i) as *const v128);
                v128_store(out.as_mut_ptr().add(i) as *mut v128, K::simd128(va, vb));
            }
        }
        n
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (o, &x) in out[done..].iter_mut().zip(&a[done..]) {
        *o = K::scalar(x, b);
    }
}

/// `out[i] = K(a, b[i])`.
#[inline(always)]
fn map_sv<K: BinaryKernel>(a: f32, b: &[f32], out: &mut [f32]) {
    assert_eq!(b.len(), out.len());
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = {
        let n = out.len() & !3;
        let va = f32x4_splat(a);
        for i in (0..n).step_by(4) {
            // SAFETY: i + 4 <= n <= the length of both slices.
            unsafe {
                let vb = v128_load(b.as_ptr().add(i) as *const v128);
                v128_store(out.as_mut_ptr().add(i) as *mut v128, K::simd128(va, vb));
            }
        }
        n
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (o, &y) in out[done..].iter_mut().zip(&b[done..]) {
        *o = K::scalar(a, y);
    }
}

/// `acc[i] = op(acc[i], x[i])`: the row update of pooling and reductions.
pub(crate) fn accumulate(op: BinaryOp, acc: &mut [f32], x: &[f32]) {
    with_binary_kernel!(op, K => accumulate_with::<K>(acc, x))
}

#[inline(always)]
fn accumulate_with<K: BinaryKernel>(acc: &mut [f32], x: &[f32]) {
    assert_eq!(acc.len(), x.len());
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = {
        let n = acc.len() & !3;
        for i in (0..n).step_by(4) {
            // SAFETY: i + 4 <= n <= the length of both slices.
            unsafe {
                let p = acc.as_mut_ptr().add(i) as *mut v128;
                v128_store(
                    p,
                    K::simd128(v128_load(p), v128_load(x.as_ptr().add(i) as *const v128)),
                );
            }
        }
        n
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (a, &v) in acc[done..].iter_mut().zip(&x[done..]) {
        *a = K::scalar(*a, v);
    }
}

/// `acc[i] = op(acc[i], x[i · stride])`: one kernel column of a pooling window over an output
/// row. Stride 2 (2x2 stride-2 pools) takes the even lanes of two vectors on wasm32; every
/// path applies the same operations in the same order, so the results are equal bit for bit.
pub(crate) fn accumulate_strided(op: BinaryOp, acc: &mut [f32], x: &[f32], stride: usize) {
    with_binary_kernel!(op, K => accumulate_strided_with::<K>(acc, x, stride))
}

#[inline(always)]
fn accumulate_strided_with<K: BinaryKernel>(acc: &mut [f32], x: &[f32], stride: usize) {
    let Some(last) = acc.len().checked_sub(1) else { return };
    assert!(stride > 0 && last * stride < x.len(), "strided taps past the input row");
    if stride == 1 {
        return accumulate_with::<K>(acc, &x[..acc.len()]);
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let done = if stride == 2 {
        // Block i reads x[2i..2i + 8], one past its last tap.
        let mut i = 0;
        while i + 4 <= acc.len() && 2 * i + 8 <= x.len() {
            // SAFETY: i + 4 <= acc.len() and 2i + 8 <= x.len().
            unsafe {
                let p = acc.as_mut_ptr().add(i) as *mut v128;
                let lo = v128_load(x.as_ptr().add(2 * i) as *const v128);
                let hi = v128_load(x.as_ptr().add(2 * i + 4) as *const v128);
                v128_store(p, K::simd128(v128_load(p), i32x4_shuffle::<0, 2, 4, 6>(lo, hi)));
            }
            i += 4;
        }
        i
    } else {
        0
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let done = 0;
    for (a, &v) in acc[done..].iter_mut().zip(x[done * stride..].iter().step_by(stride)) {
        *a = K::scalar(*a, v);
    }
}

/// A unary elementwise operator, applied in place.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Floor,
    Ceil,
    Erf,
}

impl UnaryOp {
    /// The operator on one value; the definition `unary` matches.
    #[inline(always)]
    pub fn apply_scalar(self, x: f32) -> f32 {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Reciprocal => 1.0 / x,
            UnaryOp::Floor => x.floor(),
            UnaryOp::Ceil => x.ceil(),
            UnaryOp::Erf => erf(x),
        }
    }
}

/// Applies `op` to every element of `x` in place.
pub fn unary(op: UnaryOp, x: &mut [f32]) {
    // One loop per operator with the match folded away, so LLVM vectorises
    // the ones with vector instructions (neg, abs, sqrt, floor, ceil, div).
    fn map(x: &mut [f32], f: impl Fn(f32) -> f32) {
        x.iter_mut().for_each(|v| *v = f(*v));
    }
    match op {
        UnaryOp::Neg => map(x, |v| UnaryOp::Neg.apply_scalar(v)),
        UnaryOp::Abs => map(x, |v| UnaryOp::Abs.apply_scalar(v)),
        UnaryOp::Exp => map(x, |v| UnaryOp::Exp.apply_scalar(v)),
        UnaryOp::Log => map(x, |v| UnaryOp::Log.apply_scalar(v)),
        UnaryOp::Sqrt => map(x, |v| UnaryOp::Sqrt.apply_scalar(v)),
        UnaryOp::Reciprocal => map(x, |v| UnaryOp::Reciprocal.apply_scalar(v)),
        UnaryOp::Floor => map(x, |v| UnaryOp::Floor.apply_scalar(v)),
        UnaryOp::Ceil => map(x, |v| UnaryOp::Ceil.apply_scalar(v)),
        UnaryOp::Erf => map(x, erf),
    }
}

/// The error function, within 2e-7 of the exact value over all f32 inputs.
///
/// Three polynomial pieces, each a Chebyshev (near-minimax) fit made with
/// mpmath `chebyfit` at 40 digits; their own error is below 4e-9, so f32
/// rounding of the Horner evaluation dominates:
/// - |x| < 1: `x * P(x^2)`, P of degree 6, keeping relative accuracy near 0;
/// - 1 <= |x| < 2.5 and 2.5 <= |x| < 4: erf(|x|) as a polynomial of degree
///   10 and 9 in `|x| - center`, which keeps the argument within ±0.75;
/// - |x| >= 4: erf rounds to ±1 in f32 (1 - erf(4) = 1.5e-8).
pub(crate) fn erf(x: f32) -> f32 {
    const SMALL: [f32; 7] = [
        7.875875e-5,
        -8.016_864_3e-4,
        5.189_087_2e-3,
        -2.685_421_1e-2,
        1.128_359_4e-1,
        -3.761_262_6e-1,
        core::f32::consts::FRAC_2_SQRT_PI,
    ];
    const MID: [f32; 11] = [
        -3.437_174_3e-4,
        8.625_054e-4,
        6.756_556_7e-4,
        -6.037_038_3e-3,
        8.976_283e-3,
        6.618_595e-3,
        -4.810_353_4e-2,
        9.015_788e-2,
        -9.235_620_5e-2,
        5.277_498e-2,
        9.866_717e-1,
    ];
    const TAIL: [f32; 10] = [
        2.124_756_2e-5,
        -8.248_885e-5,
        1.723_832_4e-4,
        -2.634_944_4e-4,
        3.133_083_8e-4,
        -2.865_420_5e-4,
        1.958_443_5e-4,
        -9.486_733e-5,
        2.918_863_5e-5,
        9.999_957e-1,
    ];
    /// Horner evaluation, coefficients from the highest degree down.
    fn horner(coefficients: &[f32], t: f32) -> f32 {
        coefficients.iter().fold(0.0, |acc, &c| acc * t + c)
    }
    let a = x.abs();
    let magnitude = if a < 1.0 {
        return x * horner(&SMALL, x * x);
    } else if a < 2.5 {
        horner(&MID, a - 1.75)
    } else if a < 4.0 {
        horner(&TAIL, a - 3.25)
    } else if a.is_nan() {
        return x;
    } else {
        1.0
    };
    magnitude.min(1.0).copysign(x)
}

/// `x = prelu(x, slope)`: `x < 0 ? x * slope : x`, with `slope` broadcast
/// unidirectionally to `shape`.
pub fn prelu(x: &mut [f32], shape: &[usize], slope: &[f32], slope_shape: &[usize]) {
    assert_eq!(
        x.len(),
        shape.iter().product::<usize>(),
        "x does not match shape"
    );
    assert_eq!(
        slope.len(),
        slope_shape.iter().product::<usize>(),
        "slope does not match slope_shape"
    );
    debug_assert_eq!(broadcast_shape(shape, slope_shape).as_deref(), Some(shape));
    #[inline(always)]
    fn prelu1(x: f32, s: f32) -> f32 {
        if x < 0.0 {
            x * s
        } else {
            x
        }
    }
    if slope.len() == 1 {
        let s = slope[0];
        return x.iter_mut().for_each(|v| *v = prelu1(*v, s));
    }
    for_each_run(shape, slope_shape, shape, |run| {
        let xs = &mut x[run.out..run.out + run.len];
        if run.b_contiguous {
            xs.iter_mut()
                .zip(&slope[run.b..run.b + run.len])
                .for_each(|(v, &s)| *v = prelu1(*v, s));
        } else {
            let s = slope[run.b];
            xs.iter_mut().for_each(|v| *v = prelu1(*v, s));
        }
    });
}

/// The sum of `x`, accumulated in four interleaved lanes combined as
/// `(l0 + l1) + (l2 + l3)`, then the tail in order: the same bits on every
/// target.
pub(crate) fn f32_rsum(x: &[f32]) -> f32 {
    let n = x.len() & !3;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let lanes = {
        let mut acc = f32x4_splat(0.0);
        for i in (0..n).step_by(4) {
            // SAFETY: i + 4 <= n <= x.len().
            acc = f32x4_add(acc, unsafe { v128_load(x.as_ptr().add(i) as *const v128) });
        }
        [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ]
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let lanes = x[..n].chunks_exact(4).fold([0.0f32; 4], |acc, c| {
        [acc[0] + c[0], acc[1] + c[1], acc[2] + c[2], acc[3] + c[3]]
    });
    x[n..]
        .iter()
        .fold((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]), |acc, &v| {
            acc + v
        })
}

/// The maximum of `x` under `pmax` (NaNs after the first element are
/// skipped), or -inf for an empty slice.
pub(crate) fn f32_rmax(x: &[f32]) -> f32 {
    let n = x.len() & !3;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let lanes = {
        let mut acc = f32x4_splat(f32::NEG_INFINITY);
        for i in (0..n).step_by(4) {
            // SAFETY: i + 4 <= n <= x.len().
            acc = f32x4_pmax(acc, unsafe { v128_load(x.as_ptr().add(i) as *const v128) });
        }
        [
            f32x4_extract_lane::<0>(acc),
            f32x4_extract_lane::<1>(acc),
            f32x4_extract_lane::<2>(acc),
            f32x4_extract_lane::<3>(acc),
        ]
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let lanes = x[..n]
        .chunks_exact(4)
        .fold([f32::NEG_INFINITY; 4], |acc, c| {
            [
                pmax(acc[0], c[0]),
                pmax(acc[1], c[1]),
                pmax(acc[2], c[2]),
                pmax(acc[3], c[3]),
            ]
        });
    x[n..].iter().fold(
        pmax(pmax(lanes[0], lanes[1]), pmax(lanes[2], lanes[3])),
        |acc, &v| pmax(acc, v),
    )
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
        fn f32(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.f32()).collect()
        }
    }

    const OPS: [BinaryOp; 7] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
    ];

    /// The pooling column update against `acc[i] = op.apply_scalar(acc[i], x[i·stride])` bit
    /// for bit (NaN payloads aside): strides 1-3, rows of 0-19 outputs, input rows that end at
    /// the last tap or past it (the stride-2 SIMD path reads one element past a block), NaN
    /// and equal values.
    #[test]
    fn strided_accumulation_is_the_scalar_definition() {
        let mut rng = Rng(41);
        for op in OPS {
            for stride in 1..=3 {
                for len in 0..20 {
                    for extra in 0..3 {
                        let x_len = if len == 0 { extra } else { (len - 1) * stride + 1 + extra };
                        let mut x = rng.vec(x_len);
                        let mut acc = rng.vec(len);
                        for v in x.iter_mut().chain(acc.iter_mut()) {
                            match rng.below(8) {
                                0 => *v = f32::NAN,
                                1 => *v = 1.0,
                                _ => {}
                            }
                        }
                        let want: Vec<f32> = acc.iter().enumerate().map(|(i, &a)| op.apply_scalar(a, x[i * stride])).collect();
                        accumulate_strided(op, &mut acc, &x, stride);
                        // Any NaN is NaN: wasm does not fix NaN payloads.
                        let bits = |v: &[f32]| v.iter().map(|f| if f.is_nan() { u32::MAX } else { f.to_bits() }).collect::<Vec<_>>();
                        assert_eq!(bits(&acc), bits(&want), "{op:?} stride {stride} len {len} extra {extra}");
                    }
                }
            }
        }
    }

    /// Index-by-index broadcast: unravel each output index, clamp broadcast
    /// axes to 0, ravel into each input.
    fn naive_binary(
        op: BinaryOp,
        a: &[f32],
        a_shape: &[usize],
        b: &[f32],
        b_shape: &[usize],
        out_shape: &[usize],
    ) -> Vec<f32> {
        let rank = out_shape.len();
        let ravel = |shape: &[usize], index: &[usize]| {
            let lead = rank - shape.len();
            shape.iter().enumerate().fold(0, |acc, (i, &d)| {
                acc * d + if d == 1 { 0 } else { index[lead + i] }
            })
        };
        let n: usize = out_shape.iter().product();
        (0..n)
            .map(|flat| {
                let mut index = vec![0; rank];
                let mut rest = flat;
                for i in (0..rank).rev() {
                    index[i] = rest % out_shape[i];
                    rest /= out_shape[i];
                }
                op.apply_scalar(a[ravel(a_shape, &index)], b[ravel(b_shape, &index)])
            })
            .collect()
    }

    fn same_bits(x: f32, y: f32) -> bool {
        x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan())
    }

    #[test]
    fn broadcast_shape_follows_numpy() {
        assert_eq!(broadcast_shape(&[2, 3, 4], &[4]), Some(vec![2, 3, 4]));
        assert_eq!(broadcast_shape(&[], &[5]), Some(vec![5]));
        assert_eq!(broadcast_shape(&[], &[]), Some(vec![]));
        assert_eq!(
            broadcast_shape(&[8, 1, 6, 1], &[7, 1, 5]),
            Some(vec![8, 7, 6, 5])
        );
        assert_eq!(broadcast_shape(&[0, 3], &[1, 3]), Some(vec![0, 3]));
        assert_eq!(broadcast_shape(&[2, 3], &[3, 2]), None);
        assert_eq!(broadcast_shape(&[0], &[2]), None);
    }

    /// Random output shapes of rank 0..5; each input takes a suffix of the
    /// output shape with random axes set to 1, which covers every broadcast
    /// pattern (same shape, scalar, inner/outer/middle broadcast, both sides).
    #[test]
    fn binary_matches_naive_on_random_broadcasts() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for case in 0..3000 {
            let rank = rng.below(6);
            let out_shape: Vec<usize> = (0..rank).map(|_| [1, 2, 3, 5, 7][rng.below(5)]).collect();
            let input_shape = |rng: &mut Rng| -> Vec<usize> {
                let r = rng.below(rank + 1);
                out_shape[rank - r..]
                    .iter()
                    .map(|&d| if rng.below(3) == 0 { 1 } else { d })
                    .collect()
            };
            let a_shape = input_shape(&mut rng);
            let b_shape = input_shape(&mut rng);
            let out_shape = broadcast_shape(&a_shape, &b_shape).unwrap();
            let a = rng.vec(a_shape.iter().product());
            let b = rng.vec(b_shape.iter().product());
            for op in OPS {
                let expected = naive_binary(op, &a, &a_shape, &b, &b_shape, &out_shape);
                let mut out = vec![f32::NAN; expected.len()];
                binary(op, &a, &a_shape, &b, &b_shape, &mut out, &out_shape);
                for (i, (x, y)) in out.iter().zip(&expected).enumerate() {
                    assert!(same_bits(*x, *y), "case {case} {op:?} a{a_shape:?} b{b_shape:?} out{out_shape:?} at {i}: {x} vs {y}");
                }
            }
        }
    }

    /// The named fast-path shapes at lengths around the SIMD width.
    #[test]
    fn binary_fast_paths_on_odd_lengths() {
        let mut rng = Rng(7);
        for n in [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31] {
            let shapes: [(&[usize], &[usize]); 6] = [
                (&[n], &[n]),
                (&[n], &[]),
                (&[], &[n]),
                (&[2, 3, n, 2], &[3, 1, 1]),
                (&[3, 1, 1], &[2, 3, n, 2]),
                (&[n, 3], &[3]),
            ];
            for (a_shape, b_shape) in shapes {
                let out_shape = broadcast_shape(a_shape, b_shape).unwrap();
                let a = rng.vec(a_shape.iter().product());
                let b = rng.vec(b_shape.iter().product());
                for op in OPS {
                    let expected = naive_binary(op, &a, a_shape, &b, b_shape, &out_shape);
                    let mut out = vec![0.0; expected.len()];
                    binary(op, &a, a_shape, &b, b_shape, &mut out, &out_shape);
                    assert!(
                        out.iter().zip(&expected).all(|(x, y)| same_bits(*x, *y)),
                        "{op:?} {a_shape:?} {b_shape:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn binary_on_empty_tensors() {
        let mut out: Vec<f32> = vec![];
        binary(
            BinaryOp::Add,
            &[],
            &[0, 3],
            &[1.0, 2.0, 3.0],
            &[3],
            &mut out,
            &[0, 3],
        );
        binary(BinaryOp::Add, &[], &[2, 0], &[1.0], &[1], &mut out, &[2, 0]);
    }

    #[test]
    fn max_min_follow_pmax_pmin() {
        assert!(BinaryOp::Max.apply_scalar(f32::NAN, 1.0).is_nan());
        assert_eq!(BinaryOp::Max.apply_scalar(1.0, f32::NAN), 1.0);
        assert!(BinaryOp::Min.apply_scalar(f32::NAN, 1.0).is_nan());
        assert_eq!(BinaryOp::Min.apply_scalar(1.0, f32::NAN), 1.0);
        let a = [f32::NAN, 1.0, -0.0, 0.0, 3.0];
        let b = [1.0, f32::NAN, 0.0, -0.0, -3.0];
        for op in [BinaryOp::Max, BinaryOp::Min] {
            let mut out = [0.0; 5];
            binary(op, &a, &[5], &b, &[5], &mut out, &[5]);
            for i in 0..5 {
                assert!(
                    same_bits(out[i], op.apply_scalar(a[i], b[i])),
                    "{op:?} at {i}"
                );
            }
        }
    }

    #[test]
    fn accumulate_matches_scalar_definition() {
        let mut rng = Rng(5);
        for n in [0, 1, 3, 4, 7, 9, 33] {
            let acc0 = rng.vec(n);
            let x = rng.vec(n);
            for op in OPS {
                let mut acc = acc0.clone();
                accumulate(op, &mut acc, &x);
                for i in 0..n {
                    assert!(
                        same_bits(acc[i], op.apply_scalar(acc0[i], x[i])),
                        "{op:?} n={n} at {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn unary_matches_scalar_definition() {
        let xs: Vec<f32> = (-45..=45)
            .map(|i| i as f32 * 0.173)
            .chain([0.0, -0.0, 1e-30, f32::INFINITY])
            .collect();
        for op in [
            UnaryOp::Neg,
            UnaryOp::Abs,
            UnaryOp::Exp,
            UnaryOp::Log,
            UnaryOp::Sqrt,
            UnaryOp::Reciprocal,
            UnaryOp::Floor,
            UnaryOp::Ceil,
            UnaryOp::Erf,
        ] {
            let mut ys = xs.clone();
            unary(op, &mut ys);
            for (x, y) in xs.iter().zip(&ys) {
                assert!(same_bits(*y, op.apply_scalar(*x)), "{op:?}({x}) = {y}");
            }
        }
        assert_eq!(UnaryOp::Floor.apply_scalar(-1.5), -2.0);
        assert_eq!(UnaryOp::Ceil.apply_scalar(-1.5), -1.0);
        assert_eq!(UnaryOp::Reciprocal.apply_scalar(4.0), 0.25);
    }

    /// erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_n x^(2n+1) 2^n / (1*3*...*(2n+1)),
    /// a series of positive terms, so f64 evaluation has no cancellation.
    fn erf_f64(x: f64) -> f64 {
        let (mut term, mut sum, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 * sum.abs() {
            n += 1.0;
            term *= 2.0 * x * x / (2.0 * n + 1.0);
            sum += term;
        }
        2.0 / core::f64::consts::PI.sqrt() * (-x * x).exp() * sum
    }

    #[test]
    fn erf_is_within_2e7_of_exact() {
        let mut worst = (0.0f64, 0.0f32);
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            let err = (erf(x) as f64 - erf_f64(x as f64)).abs();
            if err > worst.0 {
                worst = (err, x);
            }
        }
        assert!(worst.0 < 2e-7, "max |erf error| {} at {}", worst.0, worst.1);
        // Relative accuracy near 0, where GELU evaluates it most.
        for x in [1e-3f32, 1e-6, 1e-20] {
            let rel = ((erf(x) as f64 - erf_f64(x as f64)) / erf_f64(x as f64)).abs();
            assert!(rel < 3e-7, "relative erf error {rel} at {x}");
        }
        assert_eq!(erf(4.0), 1.0);
        assert_eq!(erf(-100.0), -1.0);
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert!(erf(f32::NAN).is_nan());
        assert!(same_bits(erf(-0.0), -0.0));
    }

    #[test]
    fn prelu_broadcasts_slope() {
        let mut rng = Rng(11);
        let cases: [(&[usize], &[usize]); 5] = [
            (&[2, 3, 5, 7], &[3, 1, 1]),
            (&[2, 3, 5, 7], &[1]),
            (&[4, 5], &[5]),
            (&[2, 3, 5], &[2, 3, 5]),
            (&[3, 4, 5], &[4, 1]),
        ];
        for (shape, slope_shape) in cases {
            let x = rng.vec(shape.iter().product());
            let slope = rng.vec(slope_shape.iter().product());
            let slopes = naive_binary(
                BinaryOp::Add,
                &vec![0.0; x.len()],
                shape,
                &slope,
                slope_shape,
                shape,
            );
            let mut y = x.clone();
            prelu(&mut y, shape, &slope, slope_shape);
            for i in 0..x.len() {
                let expected = if x[i] < 0.0 { x[i] * slopes[i] } else { x[i] };
                assert_eq!(y[i], expected, "{shape:?} {slope_shape:?} at {i}");
            }
        }
    }

    #[test]
    fn reductions_match_their_lane_order() {
        let mut rng = Rng(3);
        for n in [0, 1, 3, 4, 5, 8, 13, 64, 101] {
            let x = rng.vec(n);
            let mut lanes = [0.0f32; 4];
            for (i, v) in x[..n & !3].iter().enumerate() {
                lanes[i % 4] += v;
            }
            let expected = x[n & !3..]
                .iter()
                .fold((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]), |a, v| a + v);
            assert_eq!(f32_rsum(&x).to_bits(), expected.to_bits(), "sum of {n}");
            let exact: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((f32_rsum(&x) as f64 - exact).abs() < 1e-5 * (n as f64 + 1.0));
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(f32_rmax(&x), max, "max of {n}");
        }
    }
}
