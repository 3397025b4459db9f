//! Elementwise ops: binary with numpy broadcasting, unary, activations, PRelu, Softmax and
//! LogSoftmax. Forwards are the FP32 kernels; backwards:
//! - Add `da = dy`, `db = dy`; Sub `db = -dy`; Mul `da = dy·b`, `db = dy·a`;
//!   Div `da = dy/b`, `db = -dy·a/b²`; Max/Min route `dy` to the operand the kernel picked
//!   (`a` on ties, as `pmax`/`pmin` pick it); Pow `da = dy·b·a^(b-1)`, `db = dy·y·ln a` (0 for
//!   `a <= 0`). A broadcast operand sums the gradients of every output it reached.
//! - Unary: Neg, Abs (`sign`, 0 at 0), Exp (`y`), Log (`1/x`), Sqrt (`1/(2y)`), Reciprocal
//!   (`-y²`), Floor and Ceil (0), Erf (`2/√π·e^(-x²)`).
//! - Activations: `ops::activation_derivative` at the input.
//! - PRelu `dx = x < 0 ? slope : 1`, `dslope = Σ dy·x` over `x < 0`.
//! - Softmax `dx = y·(dy - Σ dy·y)`, LogSoftmax `dx = dy - e^y·Σ dy`, along the axis.

use super::{activation_derivative, broadcast_strides, for_each_broadcast, Bwd, Fwd, TrainOp};
use crate::ir::{Activation, BinaryOp, UnaryOp};
use crate::kernels::elementwise::{binary, prelu, unary};
use crate::kernels::softmax::{log_softmax, softmax};

pub struct BinaryNode {
    pub op: BinaryOp,
    pub a: Vec<usize>,
    pub b: Vec<usize>,
    pub y: Vec<usize>,
}

impl TrainOp for BinaryNode {
    fn forward(&self, f: &mut Fwd) {
        binary(self.op, f.x[0], &self.a, f.x[1], &self.b, &mut f.y[0], &self.y);
    }

    fn backward(&self, b: &mut Bwd) {
        let (xa, xb, y, dy) = (b.x[0], b.x[1], b.y[0], b.dy[0]);
        let mut da = b.dx[0].take();
        let mut db = b.dx[1].take();
        let op = self.op;
        // d(out)/da and d(out)/db at one element.
        let partials = |a: f32, bv: f32, y: f32| -> (f32, f32) {
            match op {
                BinaryOp::Add => (1.0, 1.0),
                BinaryOp::Sub => (1.0, -1.0),
                BinaryOp::Mul => (bv, a),
                BinaryOp::Div => (1.0 / bv, -a / (bv * bv)),
                // pmax(a, b) = b if a < b else a: the operand the kernel returned.
                BinaryOp::Max => if a < bv { (0.0, 1.0) } else { (1.0, 0.0) },
                BinaryOp::Min => if bv < a { (0.0, 1.0) } else { (1.0, 0.0) },
                BinaryOp::Pow => (bv * a.powf(bv - 1.0), if a > 0.0 { y * a.ln() } else { 0.0 }),
            }
        };
        if self.a == self.y && self.b == self.y {
            // Each element once: written, not added (`overwrites_dx`).
            match (da.as_deref_mut(), db.as_deref_mut(), op) {
                (Some(d), None, BinaryOp::Add | BinaryOp::Sub) => d.copy_from_slice(dy),
                (None, Some(d), BinaryOp::Add) => d.copy_from_slice(dy),
                (Some(d0), Some(d1), BinaryOp::Add) => {
                    d0.copy_from_slice(dy);
                    d1.copy_from_slice(dy);
                }
                _ => {
                    for i in 0..dy.len() {
                        let (pa, pb) = partials(xa[i], xb[i], y[i]);
                        if let Some(d) = da.as_deref_mut() {
                            d[i] = dy[i] * pa;
                        }
                        if let Some(d) = db.as_deref_mut() {
                            d[i] = dy[i] * pb;
                        }
                    }
                }
            }
        } else {
            let (sa, sb) = (broadcast_strides(&self.a, &self.y), broadcast_strides(&self.b, &self.y));
            for_each_broadcast(&self.y, &sa, &sb, |o, ia, ib| {
                let (pa, pb) = partials(xa[ia], xb[ib], y[o]);
                if let Some(d) = da.as_deref_mut() {
                    d[ia] += dy[o] * pa;
                }
                if let Some(d) = db.as_deref_mut() {
                    d[ib] += dy[o] * pb;
                }
            });
        }
        b.dx[0] = da;
        b.dx[1] = db;
    }

    fn overwrites_dx(&self, _i: usize) -> bool {
        self.a == self.y && self.b == self.y
    }
}

pub struct UnaryNode {
    pub op: UnaryOp,
}

impl TrainOp for UnaryNode {
    fn forward(&self, f: &mut Fwd) {
        f.y[0].copy_from_slice(f.x[0]);
        unary(self.op, &mut f.y[0]);
    }

    fn backward(&self, b: &mut Bwd) {
        let (x, y, dy) = (b.x[0], b.y[0], b.dy[0]);
        let op = self.op;
        let Some(dx) = b.dx(0) else { return };
        for i in 0..dx.len() {
            let d = match op {
                UnaryOp::Neg => -1.0,
                UnaryOp::Abs => {
                    if x[i] > 0.0 {
                        1.0
                    } else if x[i] < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                }
                UnaryOp::Exp => y[i],
                UnaryOp::Log => 1.0 / x[i],
                UnaryOp::Sqrt => 0.5 / y[i],
                UnaryOp::Reciprocal => -y[i] * y[i],
                UnaryOp::Floor | UnaryOp::Ceil => 0.0,
                UnaryOp::Erf => std::f32::consts::FRAC_2_SQRT_PI * (-x[i] * x[i]).exp(),
            };
            dx[i] += dy[i] * d;
        }
    }
}

pub struct ActivationNode {
    pub act: Activation,
}

impl TrainOp for ActivationNode {
    fn forward(&self, f: &mut Fwd) {
        self.act.apply_to(f.x[0], &mut f.y[0]);
    }

    fn backward(&self, b: &mut Bwd) {
        let (x, dy) = (b.x[0], b.dy[0]);
        let act = self.act;
        let Some(dx) = b.dx(0) else { return };
        match act {
            Activation::Identity => dx.copy_from_slice(dy),
            Activation::Relu => dx.iter_mut().zip(x.iter().zip(dy)).for_each(|(d, (&x, &g))| *d = super::keep_if(g, x > 0.0)),
            Activation::Clip { min, max } => dx.iter_mut().zip(x.iter().zip(dy)).for_each(|(d, (&x, &g))| *d = super::keep_if(g, (x > min) & (x < max))),
            _ => dx.iter_mut().zip(x.iter().zip(dy)).for_each(|(d, (&x, &g))| *d = g * activation_derivative(act, x)),
        }
    }

    fn overwrites_dx(&self, _i: usize) -> bool {
        true
    }
}

pub struct PReluNode {
    pub x: Vec<usize>,
    pub slope: Vec<usize>,
}

impl TrainOp for PReluNode {
    fn forward(&self, f: &mut Fwd) {
        f.y[0].copy_from_slice(f.x[0]);
        prelu(&mut f.y[0], &self.x, f.x[1], &self.slope);
    }

    fn backward(&self, b: &mut Bwd) {
        let (x, slope, dy) = (b.x[0], b.x[1], b.dy[0]);
        let mut dx = b.dx[0].take();
        let mut ds = b.dx[1].take();
        let (sx, ss) = (broadcast_strides(&self.x, &self.x), broadcast_strides(&self.slope, &self.x));
        for_each_broadcast(&self.x, &sx, &ss, |o, _, is| {
            if x[o] < 0.0 {
                if let Some(d) = dx.as_deref_mut() {
                    d[o] += dy[o] * slope[is];
                }
                if let Some(d) = ds.as_deref_mut() {
                    d[is] += dy[o] * x[o];
                }
            } else if let Some(d) = dx.as_deref_mut() {
                d[o] += dy[o];
            }
        });
        b.dx[0] = dx;
        b.dx[1] = ds;
    }
}

pub struct SoftmaxNode {
    outer: usize,
    axis_len: usize,
    inner: usize,
    log: bool,
}

impl SoftmaxNode {
    pub fn new(shape: &[usize], axis: usize, log: bool) -> SoftmaxNode {
        SoftmaxNode { outer: shape[..axis].iter().product(), axis_len: shape[axis], inner: shape[axis + 1..].iter().product(), log }
    }
}

impl TrainOp for SoftmaxNode {
    fn forward(&self, f: &mut Fwd) {
        f.y[0].copy_from_slice(f.x[0]);
        if self.log {
            log_softmax(&mut f.y[0], self.outer, self.axis_len, self.inner)
        } else {
            softmax(&mut f.y[0], self.outer, self.axis_len, self.inner)
        }
    }

    fn backward(&self, b: &mut Bwd) {
        let (y, dy) = (b.y[0], b.dy[0]);
        let (n, inner, log) = (self.axis_len, self.inner, self.log);
        let Some(dx) = b.dx(0) else { return };
        for o in 0..self.outer {
            for i in 0..inner {
                let at = |k: usize| (o * n + k) * inner + i;
                if log {
                    let total: f64 = (0..n).map(|k| dy[at(k)] as f64).sum();
                    for k in 0..n {
                        dx[at(k)] += dy[at(k)] - (y[at(k)].exp() as f64 * total) as f32;
                    }
                } else {
                    let dot: f64 = (0..n).map(|k| dy[at(k)] as f64 * y[at(k)] as f64).sum();
                    for k in 0..n {
                        dx[at(k)] += y[at(k)] * (dy[at(k)] - dot as f32);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::gradcheck::{check_graph, Builder};
    use super::super::activation_backward;
    use crate::ir::{Activation, BinaryOp, Op, UnaryOp};

    fn binary_case(seed: u64, op: BinaryOp, a: &[usize], b: &[usize], positive: bool) {
        let mut bl = Builder::new(seed);
        let n: usize = a.iter().product();
        let xa = if positive { bl.input_with("a", a, (0..n).map(|i| 0.5 + (i % 7) as f32 * 0.21).collect()) } else { bl.input("a", a) };
        // The second operand as a constant (a weight-like operand) or as an input.
        let m: usize = b.iter().product();
        let xb = bl.konst_with("b", b, (0..m).map(|i| 0.6 + ((i * 5) % 11) as f32 * 0.13 - if positive { 0.0 } else { 0.7 }).collect());
        let y = bl.one("y", Op::Binary(op), &[xa, xb]);
        let (g, inputs) = bl.finish(&[y]);
        check_graph(&g, &inputs, 1e-3, 2e-3, 0);
    }

    #[test]
    fn binary_ops_with_every_broadcast() {
        let shapes: [(&[usize], &[usize]); 5] = [
            (&[2, 3, 4], &[2, 3, 4]),
            (&[1, 5, 3, 2], &[1, 5, 1, 1]),
            (&[3, 1, 4], &[2, 1]),
            (&[4], &[3, 1]),
            (&[2, 3], &[]),
        ];
        for (i, (a, b)) in shapes.iter().enumerate() {
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max, BinaryOp::Min] {
                binary_case(i as u64, op, a, b, false);
            }
            binary_case(i as u64, BinaryOp::Pow, a, b, true);
        }
        // Both operands activations, one of them broadcast: the SE-block form.
        let mut bl = Builder::new(7);
        let x = bl.input("x", &[1, 4, 3, 5]);
        let s = bl.input("s", &[1, 4, 1, 1]);
        let y = bl.one("y", Op::Binary(BinaryOp::Mul), &[x, s]);
        let (g, inputs) = bl.finish(&[y]);
        check_graph(&g, &inputs, 1e-3, 2e-3, 0);
    }

    #[test]
    fn unary_ops() {
        for op in [UnaryOp::Neg, UnaryOp::Abs, UnaryOp::Exp, UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Reciprocal, UnaryOp::Floor, UnaryOp::Ceil, UnaryOp::Erf] {
            let mut bl = Builder::new(3);
            let positive = matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Reciprocal);
            // Away from 0 (Abs) and from integers (Floor, Ceil).
            let data: Vec<f32> = (0..15).map(|i| (if positive { 0.4 } else { -1.7 }) + i as f32 * 0.231).collect();
            let x = bl.input_with("x", &[3, 5], data);
            let y = bl.one("y", Op::Unary(op), &[x]);
            let (g, inputs) = bl.finish(&[y]);
            check_graph(&g, &inputs, 1e-3, 2e-3, 0);
        }
    }

    const ACTIVATIONS: [Activation; 9] = [
        Activation::Identity,
        Activation::Relu,
        Activation::Clip { min: -0.5, max: 0.75 },
        Activation::LeakyRelu { alpha: 0.1 },
        Activation::Sigmoid,
        Activation::HardSigmoid { alpha: 0.2, beta: 0.5 },
        Activation::HardSwish,
        Activation::Silu,
        Activation::Tanh,
    ];

    #[test]
    fn every_activation() {
        for act in ACTIVATIONS {
            let mut bl = Builder::new(4);
            // Spread over [-4.5, 4.5], off every kink (0, -0.5, 0.75, ±2.5, ±3).
            let data: Vec<f32> = (0..21).map(|i| -4.43 + i as f32 * 0.4373).collect();
            let x = bl.input_with("x", &[3, 7], data);
            let y = bl.one("y", Op::Activation(act), &[x]);
            let (g, inputs) = bl.finish(&[y]);
            check_graph(&g, &inputs, 1e-3, 2e-3, 0);
        }
    }

    #[test]
    fn clamps_read_from_the_output_agree_with_the_input_derivative() {
        let z: Vec<f32> = (0..41).map(|i| -2.0 + i as f32 * 0.1).collect();
        let dy: Vec<f32> = (0..41).map(|i| 1.0 + i as f32).collect();
        for act in [Activation::Relu, Activation::Clip { min: -0.5, max: 0.75 }, Activation::Clip { min: 0.0, max: 6.0 }] {
            let mut y = z.clone();
            act.apply(&mut y);
            let (mut from_y, mut from_z) = (vec![0.0; 41], vec![0.0; 41]);
            activation_backward(act, None, &y, &dy, &mut from_y);
            for i in 0..41 {
                from_z[i] = dy[i] * super::super::activation_derivative(act, z[i]);
            }
            assert_eq!(from_y, from_z, "{act:?}");
        }
    }

    #[test]
    fn prelu_with_broadcast_slopes() {
        for (x, s) in [(&[1usize, 3, 4, 2][..], &[3usize, 1, 1][..]), (&[2, 5], &[1]), (&[2, 3, 4], &[3, 4])] {
            let mut bl = Builder::new(5);
            let n: usize = x.iter().product();
            let data: Vec<f32> = (0..n).map(|i| if i % 3 == 0 { 0.3 + i as f32 * 0.01 } else { -0.4 - i as f32 * 0.02 }).collect();
            let xi = bl.input_with("x", x, data);
            let slope = bl.konst("slope", s);
            let y = bl.one("y", Op::PRelu, &[xi, slope]);
            let (g, inputs) = bl.finish(&[y]);
            check_graph(&g, &inputs, 1e-3, 2e-3, 0);
        }
    }

    #[test]
    fn softmax_and_log_softmax_on_inner_and_outer_axes() {
        for (axis, log) in [(1, false), (1, true), (2, false), (0, true), (2, true)] {
            let mut bl = Builder::new(6);
            let x = bl.input("x", &[2, 5, 3]);
            let y = bl.one("y", Op::Softmax { axis, log }, &[x]);
            let (g, inputs) = bl.finish(&[y]);
            check_graph(&g, &inputs, 1e-3, 2e-3, 0);
        }
    }
}
