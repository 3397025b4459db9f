//! The backward of a depthwise convolution for one channel, in phase-plane form.
//!
//! At stride `(sh, sw)`, tap `(ky, kx)` reads only the padded input pixels whose row and column
//! are `≡ (ky·dh, kx·dw)` modulo the stride. Split the zero-padded input plane into `sh·sw`
//! phase planes (pixels grouped by those remainders) with one row pitch, and lay the output
//! gradient `dz` out with the same pitch (zeros in the extra columns). The tap then reads its
//! phase plane at the stride-1 offset `off = (ky·dh / sh)·pitch + kx·dw / sw`, and over the
//! whole plane
//!
//! ```text
//! dW[tap]      = Σ_j x_phase[j] · dz[j − off]
//! dX_phase[j] += Σ_{taps of the phase} w[tap] · dz[j − off]
//! ```
//!
//! with `dz` zero outside the output: `margin ≥ max off` zeros before it, zeros after it.
//!
//! Both sums read the same shifted `dz`, so one pass over a phase plane serves a group of its
//! taps: each vector of `dz` is loaded once for both gradients, and `dX` is loaded and stored
//! once per group instead of once per tap as a scatter (`dX[j + off] += w · dz[j]`) would.
//! Groups hold up to 4 taps (4 weight-gradient accumulators, 4 weights, `x`, `dX`, `dz`: 11 of
//! the 16 vector registers of x86-64), taps of a phase split as evenly as possible (a 3x3
//! stride-1 kernel is three groups of three). Against a dot product and an axpy per tap over
//! the plane, EfficientNet-Lite0's depthwise backward with both gradients went from 65 to 21 ms
//! a frame in Chromium (`node bench/run.mjs qat-profile`, full mode; its forward: 19 ms).
//!
//! Summation order, the same in the scalar and the SIMD128 kernel (bit for bit): lane `l` of a
//! tap's weight gradient sums the `j ≡ l (mod 4)` in increasing `j`, the lanes add as
//! `(l0 + l1) + (l2 + l3)`, and that adds into `dW[tap]`; `dX[j]` adds the group's taps in order.

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
use core::arch::wasm32::*;

/// Largest group of taps that one pass over a phase plane serves.
const MAX_GROUP: usize = 4;

/// One kernel tap in phase-plane form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseTap {
    /// Which phase plane the tap reads.
    pub phase: usize,
    /// Its stride-1 offset in that plane.
    pub offset: usize,
    /// Its index in the channel's `kh·kw` weights (row-major).
    pub index: usize,
}

/// The backward of one depthwise output channel over one image.
pub struct DwGradArgs<'a> {
    /// The phase planes of the zero-padded input channel, `plane` floats each. Needed for `dw`.
    pub x: &'a [f32],
    /// `margin` zeros, the output gradient in the planes' pitch, zeros up to `margin + plane`.
    pub dz: &'a [f32],
    pub margin: usize,
    /// Floats per phase plane, a multiple of 4.
    pub plane: usize,
    /// The kernel's taps, sorted by phase, each offset at most `margin`.
    pub taps: &'a [PhaseTap],
    /// The channel's `kh·kw` weights, by tap index.
    pub weight: &'a [f32],
    /// The phase planes of the input channel's gradient, added to.
    pub dx: Option<&'a mut [f32]>,
    /// The channel's weight gradient by tap index, added to.
    pub dw: Option<&'a mut [f32]>,
}

impl DwGradArgs<'_> {
    fn check(&self) {
        let phases = self.taps.iter().map(|t| t.phase + 1).max().unwrap_or(0);
        assert_eq!(self.plane % 4, 0, "phase planes are whole vectors");
        assert!(self.dz.len() >= self.margin + self.plane, "dz covers the margin and a plane");
        assert!(self.taps.iter().all(|t| t.offset <= self.margin && t.index < self.weight.len()));
        assert!(self.taps.windows(2).all(|t| t[0].phase <= t[1].phase), "taps sorted by phase");
        if let Some(dx) = &self.dx {
            assert!(dx.len() >= phases * self.plane);
        }
        if let Some(dw) = &self.dw {
            assert!(dw.len() >= self.weight.len() && self.x.len() >= phases * self.plane);
        }
    }
}

/// One group: `G` taps of one phase plane. `x` and `dx` are that plane (empty when not
/// wanted), `start[t]` the index in `dz` of tap `t`'s `dz[0 − off]`. Returns the group's
/// weight-gradient sums.
type GroupKernel<const G: usize> = fn(x: &[f32], dz: &[f32], start: [usize; G], w: [f32; G], dx: &mut [f32], plane: usize) -> [f32; G];

/// The portable kernel: the definition of the summation order.
#[cfg(any(test, not(all(target_arch = "wasm32", target_feature = "simd128"))))]
fn group_scalar<const G: usize, const DX: bool, const DW: bool>(x: &[f32], dz: &[f32], start: [usize; G], w: [f32; G], dx: &mut [f32], plane: usize) -> [f32; G] {
    let mut acc = [[0f32; 4]; G];
    let dz = start.map(|s| &dz[s..s + plane]);
    for j in (0..plane).step_by(4) {
        for l in 0..4 {
            let xv = if DW { x[j + l] } else { 0.0 };
            let mut d = if DX { dx[j + l] } else { 0.0 };
            for t in 0..G {
                let v = dz[t][j + l];
                if DX {
                    d += w[t] * v;
                }
                if DW {
                    acc[t][l] += xv * v;
                }
            }
            if DX {
                dx[j + l] = d;
            }
        }
    }
    acc.map(|a| (a[0] + a[1]) + (a[2] + a[3]))
}

/// [`group_scalar`] four lanes at a time, bit for bit.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
fn group_simd128<const G: usize, const DX: bool, const DW: bool>(x: &[f32], dz: &[f32], start: [usize; G], w: [f32; G], dx: &mut [f32], plane: usize) -> [f32; G] {
    assert!((!DW || x.len() >= plane) && (!DX || dx.len() >= plane) && start.iter().all(|&s| s + plane <= dz.len()));
    let mut acc = [f32x4_splat(0.0); G];
    let w = w.map(|v| f32x4_splat(v));
    let zero = f32x4_splat(0.0);
    // SAFETY: every load and store is of 4 floats at j < plane (a multiple of 4), from `x` and
    // `dx` (at least `plane` long when used) and `dz` at `start[t] + j` (asserted above).
    unsafe {
        let dz = start.map(|s| dz.as_ptr().add(s));
        let (x, dx) = (x.as_ptr(), dx.as_mut_ptr());
        let mut j = 0;
        while j < plane {
            let xv = if DW { v128_load(x.add(j) as *const v128) } else { zero };
            let mut d = if DX { v128_load(dx.add(j) as *const v128) } else { zero };
            for t in 0..G {
                let v = v128_load(dz[t].add(j) as *const v128);
                if DX {
                    d = f32x4_add(d, f32x4_mul(w[t], v));
                }
                if DW {
                    acc[t] = f32x4_add(acc[t], f32x4_mul(xv, v));
                }
            }
            if DX {
                v128_store(dx.add(j) as *mut v128, d);
            }
            j += 4;
        }
    }
    acc.map(|a| (f32x4_extract_lane::<0>(a) + f32x4_extract_lane::<1>(a)) + (f32x4_extract_lane::<2>(a) + f32x4_extract_lane::<3>(a)))
}

/// The group kernel of the build for `G` taps and the wanted gradients.
fn group_kernel<const G: usize>(dx: bool, dw: bool) -> GroupKernel<G> {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    let k: [GroupKernel<G>; 3] = [group_simd128::<G, true, true>, group_simd128::<G, true, false>, group_simd128::<G, false, true>];
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    let k: [GroupKernel<G>; 3] = [group_scalar::<G, true, true>, group_scalar::<G, true, false>, group_scalar::<G, false, true>];
    match (dx, dw) {
        (true, true) => k[0],
        (true, false) => k[1],
        _ => k[2],
    }
}

/// The scalar group kernels, whatever the build: the reference of the SIMD128 test.
#[cfg(all(test, target_arch = "wasm32", target_feature = "simd128"))]
fn group_kernel_scalar<const G: usize>(dx: bool, dw: bool) -> GroupKernel<G> {
    match (dx, dw) {
        (true, true) => group_scalar::<G, true, true>,
        (true, false) => group_scalar::<G, true, false>,
        _ => group_scalar::<G, false, true>,
    }
}

/// The group kernels for sizes `1..=MAX_GROUP`.
struct Kernels {
    g1: GroupKernel<1>,
    g2: GroupKernel<2>,
    g3: GroupKernel<3>,
    g4: GroupKernel<4>,
}

/// `dX` and/or `dW` of one depthwise output channel (see the module doc).
pub fn f32_dwconv2d_grad(args: DwGradArgs) {
    let (dx, dw) = (args.dx.is_some(), args.dw.is_some());
    run(args, Kernels { g1: group_kernel(dx, dw), g2: group_kernel(dx, dw), g3: group_kernel(dx, dw), g4: group_kernel(dx, dw) });
}

fn run(mut p: DwGradArgs, k: Kernels) {
    p.check();
    if p.dx.is_none() && p.dw.is_none() {
        return;
    }
    let plane = p.plane;
    let mut rest = p.taps;
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|t| t.phase == first.phase).count();
        let (phase_taps, tail) = rest.split_at(n);
        rest = tail;
        let groups = n.div_ceil(MAX_GROUP);
        let planes = first.phase * plane..(first.phase + 1) * plane;
        let x = if p.dw.is_some() { &p.x[planes.clone()] } else { &[][..] };
        let dx: &mut [f32] = match p.dx.as_deref_mut() {
            Some(dx) => &mut dx[planes],
            None => &mut [],
        };
        let mut t0 = 0;
        for g in 0..groups {
            // Even split: the first `n % groups` groups take one tap more.
            let size = n / groups + usize::from(g < n % groups);
            let taps = &phase_taps[t0..t0 + size];
            t0 += size;
            let start = |t: usize| p.margin - taps[t].offset;
            let w = |t: usize| p.weight[taps[t].index];
            let mut sums = [0f32; MAX_GROUP];
            match size {
                1 => sums[..1].copy_from_slice(&(k.g1)(x, p.dz, [start(0)], [w(0)], dx, plane)),
                2 => sums[..2].copy_from_slice(&(k.g2)(x, p.dz, [start(0), start(1)], [w(0), w(1)], dx, plane)),
                3 => sums[..3].copy_from_slice(&(k.g3)(x, p.dz, [start(0), start(1), start(2)], [w(0), w(1), w(2)], dx, plane)),
                _ => sums.copy_from_slice(&(k.g4)(x, p.dz, [start(0), start(1), start(2), start(3)], [w(0), w(1), w(2), w(3)], dx, plane)),
            }
            if let Some(dw) = p.dw.as_deref_mut() {
                for (tap, s) in taps.iter().zip(sums) {
                    dw[tap.index] += s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    use super::*;
    use crate::rng::Rng;

    /// A random channel: `phases` planes, taps with random offsets in random phases (some phase
    /// with 1..=9 taps, so every group size and split occurs).
    struct Case {
        x: Vec<f32>,
        dz: Vec<f32>,
        margin: usize,
        plane: usize,
        taps: Vec<PhaseTap>,
        weight: Vec<f32>,
    }

    fn case(rng: &mut Rng, phases: usize, plane: usize, margin: usize, per_phase: &[usize]) -> Case {
        let mut taps = Vec::new();
        for (phase, &n) in per_phase.iter().enumerate().take(phases) {
            for _ in 0..n {
                taps.push(PhaseTap { phase, offset: rng.int(0, margin as i64) as usize, index: taps.len() });
            }
        }
        let v = |rng: &mut Rng, n: usize| (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect::<Vec<f32>>();
        let mut dz = v(rng, margin + plane + 3);
        dz[..margin].fill(0.0);
        Case { x: v(rng, phases * plane), dz, margin, plane, weight: v(rng, taps.len()), taps }
    }

    fn cases() -> Vec<(Case, usize)> {
        let mut rng = Rng::seeded(31);
        let mut out = Vec::new();
        for (phases, per_phase) in [(1, &[9][..]), (1, &[25]), (4, &[4, 2, 2, 1]), (4, &[9, 6, 6, 4]), (2, &[1, 7]), (3, &[5, 0, 8])] {
            for (plane, margin) in [(4, 0), (8, 3), (64, 13), (132, 40)] {
                out.push((case(&mut rng, phases, plane, margin, per_phase), phases));
            }
        }
        out
    }

    #[test]
    fn gradients_are_the_phase_plane_sums() {
        for (c, phases) in cases() {
            let mut dx = vec![0.5f32; phases * c.plane];
            let mut dw = vec![0.25f32; c.weight.len()];
            f32_dwconv2d_grad(DwGradArgs { x: &c.x, dz: &c.dz, margin: c.margin, plane: c.plane, taps: &c.taps, weight: &c.weight, dx: Some(&mut dx), dw: Some(&mut dw) });
            let at = |j: usize, off: usize| if j + c.margin >= off { c.dz[j + c.margin - off] as f64 } else { 0.0 };
            for t in &c.taps {
                let x = &c.x[t.phase * c.plane..][..c.plane];
                let want: f64 = 0.25 + (0..c.plane).map(|j| x[j] as f64 * at(j, t.offset)).sum::<f64>();
                assert!((dw[t.index] as f64 - want).abs() < 1e-4, "dW of tap {t:?}: {} vs {want}", dw[t.index]);
            }
            for phase in 0..phases {
                for j in 0..c.plane {
                    let want: f64 = 0.5 + c.taps.iter().filter(|t| t.phase == phase).map(|t| c.weight[t.index] as f64 * at(j, t.offset)).sum::<f64>();
                    let got = dx[phase * c.plane + j] as f64;
                    assert!((got - want).abs() < 1e-4, "dX of phase {phase} at {j}: {got} vs {want}");
                }
            }
            // Each gradient alone is the same as both together.
            let mut dx_alone = vec![0.5f32; phases * c.plane];
            let mut dw_alone = vec![0.25f32; c.weight.len()];
            f32_dwconv2d_grad(DwGradArgs { x: &[], dz: &c.dz, margin: c.margin, plane: c.plane, taps: &c.taps, weight: &c.weight, dx: Some(&mut dx_alone), dw: None });
            f32_dwconv2d_grad(DwGradArgs { x: &c.x, dz: &c.dz, margin: c.margin, plane: c.plane, taps: &c.taps, weight: &c.weight, dx: None, dw: Some(&mut dw_alone) });
            assert_eq!(bits(&dx_alone), bits(&dx));
            assert_eq!(bits(&dw_alone), bits(&dw));
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// The SIMD128 kernels against the scalar ones, bit for bit (in Chromium: natively the
    /// build's kernels are the scalar ones).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    #[test]
    fn simd128_kernels_match_the_scalar_definition_bit_for_bit() {
        for (c, phases) in cases() {
            let mut got = (vec![0.5f32; phases * c.plane], vec![0.25f32; c.weight.len()]);
            let mut want = got.clone();
            for (out, scalar) in [(&mut got, false), (&mut want, true)] {
                let args = DwGradArgs { x: &c.x, dz: &c.dz, margin: c.margin, plane: c.plane, taps: &c.taps, weight: &c.weight, dx: Some(&mut out.0), dw: Some(&mut out.1) };
                if scalar {
                    run(args, Kernels { g1: group_kernel_scalar(true, true), g2: group_kernel_scalar(true, true), g3: group_kernel_scalar(true, true), g4: group_kernel_scalar(true, true) });
                } else {
                    f32_dwconv2d_grad(args);
                }
            }
            assert_eq!(bits(&got.0), bits(&want.0), "dX, {} taps, plane {}", c.taps.len(), c.plane);
            assert_eq!(bits(&got.1), bits(&want.1), "dW, {} taps, plane {}", c.taps.len(), c.plane);
        }
    }

    #[test]
    #[should_panic(expected = "taps sorted by phase")]
    fn unsorted_taps_are_refused() {
        let taps = [PhaseTap { phase: 1, offset: 0, index: 0 }, PhaseTap { phase: 0, offset: 0, index: 1 }];
        let mut dx = vec![0.0; 8];
        f32_dwconv2d_grad(DwGradArgs { x: &[], dz: &[0.0; 4], margin: 0, plane: 4, taps: &taps, weight: &[1.0, 2.0], dx: Some(&mut dx), dw: None });
    }
}
