//! Gemm and MatMul.
//!
//! Gemm `y = act(α·op(A)·op(B) + β·C)`, with `dz = dy·act'`:
//! `d op(A) = α·dz·op(B)ᵀ`, `d op(B) = α·op(A)ᵀ·dz` (transposed back when the operand is
//! stored transposed), `dC = β·Σ dz` over the axes C was broadcast along. A constant `B` is
//! packed once per step with α folded in, and a constant per-column `C` becomes the GEMM's
//! bias, as the FP32 engine does, so the forward is the engine's bit for bit.
//!
//! MatMul (numpy semantics, batch broadcasting): per batch item `dA_i += dY_i·B_iᵀ` and
//! `dB_i += A_iᵀ·dY_i`, summed into the operand item that was broadcast.

use std::cell::OnceCell;

use super::{activation_backward, broadcast_strides, buf, derivable_from_output, for_each_broadcast, matmul, Bwd, Fwd, TrainOp};
use crate::ir::{Activation, Graph, Node, Op};
use crate::kernels::elementwise::broadcast_shape;
use crate::kernels::gemm::{gemm, GemmBias, PackedB};

pub struct GemmOp {
    trans_a: bool,
    trans_b: bool,
    alpha: f32,
    beta: f32,
    act: Activation,
    keep_z: bool,
    m: usize,
    k: usize,
    n: usize,
    b_const: bool,
    c_shape: Option<Vec<usize>>,
    /// `C` constant and broadcast along rows: added as the GEMM's per-column bias.
    c_per_column: bool,
    /// `α·B` packed, by the first forward after B changes (in QAT the simulation gives a
    /// Gemm's values, and its float forward runs only once: see `ConvOp::packed`).
    packed_b: OnceCell<PackedB>,
    /// Per step: `β·C` per column.
    bias: Option<Vec<f32>>,
    /// Per step, when `dA` is wanted and B is constant: `op(B)ᵀ` packed as the right operand
    /// of `d op(A) = dz · op(B)ᵀ`.
    packed_bt: Option<PackedB>,
    need_da: bool,
}

impl GemmOp {
    pub fn new(g: &Graph, node: &Node, needs: &[bool]) -> GemmOp {
        let Op::Gemm { trans_a, trans_b, alpha, beta, activation } = node.op else { unreachable!("built for Gemm nodes") };
        let (a, b) = (&g.values[node.inputs[0]].shape, &g.values[node.inputs[1]].shape);
        let (m, k) = if trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
        let n = if trans_b { b[0] } else { b[1] };
        let c_shape = node.inputs.get(2).map(|&c| g.values[c].shape.clone());
        let b_const = g.values[node.inputs[1]].is_const();
        let c_per_column = node.inputs.get(2).is_some_and(|&c| {
            let v = &g.values[c];
            v.is_const() && v.shape.iter().rev().skip(1).all(|&d| d == 1) && (v.len() == n || v.len() == 1)
        });
        GemmOp {
            trans_a,
            trans_b,
            alpha,
            beta,
            act: activation,
            keep_z: !derivable_from_output(activation),
            m,
            k,
            n,
            b_const,
            c_shape,
            c_per_column,
            packed_b: OnceCell::new(),
            bias: None,
            packed_bt: None,
            need_da: needs.first().copied().unwrap_or(false),
        }
    }

    /// The engine's constant-B path applies: B constant and C absent or per column.
    fn const_path(&self) -> bool {
        self.b_const && (self.c_shape.is_none() || self.c_per_column)
    }

    /// `α·B` packed as the GEMM's right operand.
    fn pack_b(&self, b: &[f32]) -> PackedB {
        let scaled: Vec<f32>;
        let b = if self.alpha != 1.0 {
            scaled = b.iter().map(|v| v * self.alpha).collect();
            &scaled[..]
        } else {
            b
        };
        let (k, n) = (self.k, self.n);
        if self.trans_b {
            PackedB::pack_transposed(b, k, n, k)
        } else {
            PackedB::pack(b, k, n, n)
        }
    }
}

impl TrainOp for GemmOp {
    fn prepare(&mut self, consts: &[Option<&[f32]>], changed: &[bool]) {
        // Unchanged B (scales mode: only the bias trains) keeps its packings.
        let b_changed = changed[1];
        if let (true, true, Some(b)) = (b_changed, self.need_da, consts[1]) {
            // op(B)ᵀ is n x k: B itself when stored transposed, else B (k x n) read transposed.
            let (k, n) = (self.k, self.n);
            self.packed_bt = Some(if self.trans_b { PackedB::pack(b, n, k, k) } else { PackedB::pack_transposed(b, n, k, n) });
        }
        if !self.const_path() {
            return;
        }
        if changed.get(2).copied().unwrap_or(false) {
            self.bias = consts.get(2).copied().flatten().map(|c| (0..self.n).map(|j| self.beta * c[if c.len() == 1 { 0 } else { j }]).collect());
        }
        if b_changed {
            self.packed_b = OnceCell::new();
        }
    }

    fn forward(&self, f: &mut Fwd) {
        let (m, k, n) = (self.m, self.k, self.n);
        let sc = &mut *f.scratch;
        let out: &mut [f32] = if self.keep_z { buf(f.aux, m * n) } else { &mut f.y[0] };
        if self.const_path() {
            let pb = self.packed_b.get_or_init(|| self.pack_b(f.x[1]));
            if self.trans_a {
                super::transpose2d(f.x[0], k, m, buf(&mut sc.t0, m * k));
                sc.a.repack_from(&sc.t0[..m * k], m, k, k);
            } else {
                sc.a.repack_from(f.x[0], m, k, k);
            }
            let bias = self.bias.as_deref().map_or(GemmBias::None, GemmBias::PerCol);
            let act = if self.keep_z { Activation::Identity } else { self.act };
            gemm(&sc.a, pb, out, n, bias, act);
        } else {
            // The engine's general path: product, α, β·C broadcast, activation.
            matmul(f.x[0], self.trans_a, f.x[1], self.trans_b, m, k, n, out, false, sc);
            if self.alpha != 1.0 {
                out.iter_mut().for_each(|v| *v *= self.alpha);
            }
            if let (Some(cs), Some(c)) = (&self.c_shape, f.x.get(2)) {
                if self.beta != 0.0 {
                    let sc_ = broadcast_strides(cs, &[m, n]);
                    for_each_broadcast(&[m, n], &[n, 1], &sc_, |o, _, ic| out[o] += c[ic] * self.beta);
                }
            }
            if !self.keep_z {
                self.act.apply(out);
            }
        }
        if self.keep_z {
            self.act.apply_to(&f.aux[..m * n], &mut f.y[0]);
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let (m, k, n) = (self.m, self.k, self.n);
        let mut dzbuf = std::mem::take(&mut b.scratch.t3);
        let dz = buf(&mut dzbuf, m * n);
        activation_backward(self.act, self.keep_z.then_some(b.aux), b.y[0], b.dy[0], dz);
        if let (Some(dc), Some(cs)) = (b.dx.get_mut(2).and_then(|d| d.as_deref_mut()), &self.c_shape) {
            let s = broadcast_strides(cs, &[m, n]);
            for_each_broadcast(&[m, n], &[n, 1], &s, |o, _, ic| dc[ic] += dz[o] * self.beta);
        }
        if self.alpha != 1.0 {
            dz.iter_mut().for_each(|v| *v *= self.alpha);
        }
        let (a, bm) = (b.x[0], b.x[1]);
        let mut da = b.dx[0].take();
        let mut db = b.dx[1].take();
        let sc = &mut *b.scratch;
        if let Some(da) = da.as_deref_mut() {
            if let Some(pbt) = &self.packed_bt {
                // d op(A) [m x k] = dz [m x n] · op(B)ᵀ [n x k], op(B)ᵀ packed once per step.
                sc.a.repack_from(dz, m, n, n);
                if self.trans_a {
                    let t = buf(&mut sc.t2, m * k);
                    gemm(&sc.a, pbt, t, k, GemmBias::None, Activation::Identity);
                    let tt = buf(&mut sc.t0, m * k);
                    super::transpose2d(t, m, k, tt);
                    super::add_into(&mut da[..m * k], tt);
                } else {
                    // The buffer is this node's alone, written once: the GEMM writes it.
                    gemm(&sc.a, pbt, da, k, GemmBias::None, Activation::Identity);
                }
            } else if self.trans_a {
                // dA [k x m] = op(B) [k x n] · dzᵀ [n x m]
                matmul(bm, self.trans_b, dz, true, k, n, m, da, true, sc);
            } else {
                // op(B)ᵀ is B itself when B is stored transposed.
                matmul(dz, false, bm, !self.trans_b, m, n, k, da, true, sc);
            }
        }
        if let Some(db) = db.as_deref_mut() {
            if m <= 4 {
                // A few rows (a classifier on one image): outer products as axpys, no packing.
                let opa = |i: usize, p: usize| if self.trans_a { a[p * m + i] } else { a[i * k + p] };
                for i in 0..m {
                    let dzi = &dz[i * n..][..n];
                    if self.trans_b {
                        // dB [n x k] += dz[i]ᵀ · op(A)[i]
                        let row: &[f32] = if self.trans_a {
                            let r = buf(&mut sc.t0, k);
                            (0..k).for_each(|p| r[p] = opa(i, p));
                            r
                        } else {
                            &a[i * k..][..k]
                        };
                        for (j, &g) in dzi.iter().enumerate() {
                            db[j * k..][..k].iter_mut().zip(row).for_each(|(d, &v)| *d += g * v);
                        }
                    } else {
                        // dB [k x n] += op(A)[i]ᵀ · dz[i]
                        for p in 0..k {
                            let v = opa(i, p);
                            db[p * n..][..n].iter_mut().zip(dzi).for_each(|(d, &g)| *d += v * g);
                        }
                    }
                }
            } else if self.trans_b {
                // dB [n x k] = dzᵀ [n x m] · op(A) [m x k]
                matmul(dz, true, a, self.trans_a, n, m, k, db, true, sc);
            } else {
                // dB [k x n] = op(A)ᵀ [k x m] · dz [m x n]
                matmul(a, !self.trans_a, dz, false, k, m, n, db, true, sc);
            }
        }
        b.dx[0] = da;
        b.dx[1] = db;
        b.scratch.t3 = dzbuf;
    }
}

pub struct MatMulOp {
    a: Vec<usize>,
    b: Vec<usize>,
    /// A constant 2-D right operand: packed once per step, as the engine does.
    const_b: bool,
    packed_b: Option<PackedB>,
    m: usize,
    k: usize,
    n: usize,
    batch: Vec<usize>,
}

impl MatMulOp {
    pub fn new(g: &Graph, node: &Node) -> MatMulOp {
        let sa = g.values[node.inputs[0]].shape.clone();
        let sb = g.values[node.inputs[1]].shape.clone();
        let a2: Vec<usize> = if sa.len() == 1 { vec![1, sa[0]] } else { sa.clone() };
        let b2: Vec<usize> = if sb.len() == 1 { vec![sb[0], 1] } else { sb.clone() };
        let (m, k, n) = (a2[a2.len() - 2], a2[a2.len() - 1], b2[b2.len() - 1]);
        let batch = broadcast_shape(&a2[..a2.len() - 2], &b2[..b2.len() - 2]).expect("checked by shape inference");
        MatMulOp { const_b: g.values[node.inputs[1]].is_const() && sb.len() == 2, packed_b: None, a: a2, b: b2, m, k, n, batch }
    }

    /// Flat item offsets of A and B for batch item `i` (in items of `m·k` and `k·n`).
    fn offsets(&self, i: usize) -> (usize, usize) {
        let (ba, bb) = (&self.a[..self.a.len() - 2], &self.b[..self.b.len() - 2]);
        let offset = |shape: &[usize]| -> usize {
            let mut rem = i;
            let (mut off, mut stride) = (0, 1);
            for d in (0..self.batch.len()).rev() {
                let idx = rem % self.batch[d];
                rem /= self.batch[d];
                let j = d as isize - (self.batch.len() - shape.len()) as isize;
                if j >= 0 {
                    let size = shape[j as usize];
                    off += if size == 1 { 0 } else { idx * stride };
                    stride *= size;
                }
            }
            off
        };
        (offset(ba), offset(bb))
    }
}

impl TrainOp for MatMulOp {
    fn prepare(&mut self, consts: &[Option<&[f32]>], changed: &[bool]) {
        if self.const_b && changed[1] {
            self.packed_b = Some(PackedB::pack(consts[1].expect("constant B"), self.k, self.n, self.n));
        }
    }

    fn forward(&self, f: &mut Fwd) {
        let (m, k, n) = (self.m, self.k, self.n);
        let sc = &mut *f.scratch;
        if let Some(pb) = &self.packed_b {
            let rows = f.x[0].len() / k;
            sc.a.repack_from(f.x[0], rows, k, k);
            gemm(&sc.a, pb, &mut f.y[0], n, GemmBias::None, Activation::Identity);
            return;
        }
        let count: usize = self.batch.iter().product();
        for i in 0..count {
            let (oa, ob) = self.offsets(i);
            let (a, bm) = (&f.x[0][oa * m * k..][..m * k], &f.x[1][ob * k * n..][..k * n]);
            matmul(a, false, bm, false, m, k, n, &mut f.y[0][i * m * n..][..m * n], false, sc);
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let (m, k, n) = (self.m, self.k, self.n);
        let (xa, xb, dy) = (b.x[0], b.x[1], b.dy[0]);
        let mut da = b.dx[0].take();
        let mut db = b.dx[1].take();
        let sc = &mut *b.scratch;
        let count: usize = self.batch.iter().product();
        if self.packed_b.is_some() {
            // All rows of A against one B: one GEMM each way.
            let rows = xa.len() / k;
            if let Some(da) = da.as_deref_mut() {
                matmul(dy, false, xb, true, rows, n, k, da, true, sc);
            }
            if let Some(db) = db.as_deref_mut() {
                matmul(xa, true, dy, false, k, rows, n, db, true, sc);
            }
        } else {
            for i in 0..count {
                let (oa, ob) = self.offsets(i);
                let (a, bm, g) = (&xa[oa * m * k..][..m * k], &xb[ob * k * n..][..k * n], &dy[i * m * n..][..m * n]);
                if let Some(da) = da.as_deref_mut() {
                    matmul(g, false, bm, true, m, n, k, &mut da[oa * m * k..][..m * k], true, sc);
                }
                if let Some(db) = db.as_deref_mut() {
                    matmul(a, true, g, false, k, m, n, &mut db[ob * k * n..][..k * n], true, sc);
                }
            }
        }
        b.dx[0] = da;
        b.dx[1] = db;
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::gradcheck::{check_graph, Builder};
    use crate::ir::{Activation, Op};

    #[test]
    fn gemm_every_transpose_alpha_beta_and_bias_form() {
        // m = 1 and 3 take the outer-product path of the weight gradient, m = 5 the GEMM.
        let cases = [
            (1, false, true, 1.0, 1.0, Some(vec![7]), Activation::Identity),
            (2, false, false, 0.7, 1.3, Some(vec![1, 7]), Activation::Tanh),
            (3, true, true, 1.0, 0.5, Some(vec![0, 7]), Activation::Identity),
            (4, true, false, 1.5, 1.0, Some(vec![0, 1]), Activation::Sigmoid),
            (5, false, true, 1.0, 1.0, None, Activation::HardSwish),
            (6, false, false, 1.0, 1.0, Some(vec![1]), Activation::Identity),
        ];
        for (seed, trans_a, trans_b, alpha, beta, c, act) in cases {
            for m in [5, 1, 3] {
                let (k, n) = (9, 7);
                // A 0 in C's shape stands for m (C as large as the output along rows).
                let c: Option<Vec<usize>> = c.as_ref().map(|cs| cs.iter().map(|&d| if d == 0 { m } else { d }).collect());
                let mut b = Builder::new(seed);
                let a = b.input("a", &if trans_a { [k, m] } else { [m, k] });
                let w = b.konst("w", &if trans_b { [n, k] } else { [k, n] });
                let mut inputs = vec![a, w];
                if let Some(cs) = &c {
                    inputs.push(b.konst("c", cs));
                }
                let y = b.one("gemm", Op::Gemm { trans_a, trans_b, alpha, beta, activation: act }, &inputs);
                let (g, data) = b.finish(&[y]);
                check_graph(&g, &data, 1e-2, 3e-3, 0);
            }
        }
        // Both operands computed at run time, C as well.
        let mut b = Builder::new(8);
        let a = b.input("a", &[3, 4]);
        let w = b.input("w", &[6, 4]);
        let c = b.input("c", &[3, 1]);
        let y = b.one("gemm", Op::Gemm { trans_a: false, trans_b: true, alpha: 0.9, beta: 1.1, activation: Activation::Identity }, &[a, w, c]);
        let (g, data) = b.finish(&[y]);
        check_graph(&g, &data, 1e-2, 3e-3, 0);
    }

    #[test]
    fn matmul_with_constant_weights_batches_and_broadcast() {
        for (seed, a, bs, konst) in [
            (1u64, vec![2usize, 3, 5], vec![5usize, 4], true),
            (2, vec![2, 3, 5], vec![2, 5, 4], false),
            (3, vec![3, 1, 2, 5], vec![4, 5, 3], false),
            (4, vec![5], vec![5, 3], false),
            (5, vec![2, 4], vec![4], false),
        ] {
            let mut b = Builder::new(seed);
            let x = b.input("a", &a);
            let w = if konst { b.konst("b", &bs) } else { b.input("b", &bs) };
            let y = b.one("mm", Op::MatMul, &[x, w]);
            let (g, data) = b.finish(&[y]);
            check_graph(&g, &data, 1e-2, 3e-3, 0);
        }
    }
}
