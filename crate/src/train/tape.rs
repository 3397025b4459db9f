//! The training forward and backward over one graph.
//!
//! # Forward
//! Node by node in graph order, each op's training form (`train::ops`) runs the FP32
//! kernels; every value with a [`FakeQuant`] is then replaced by its fake quantization. This is
//! bit for bit `Fp32Engine::fake_quantized` on the annotated graph: each result computed in f32
//! and rounded once, which is differentiable (straight-through).
//!
//! The int8 engine rounds differently: exact integer accumulators, requantized with a
//! fixed-point multiplier. The two disagree by a step on rare near-ties, and later layers carry
//! such flips (2-3 output steps on EfficientNet-Lite0, 23 on one BlazeFace image), so a model
//! trained on the plain forward is not quite the one deployed. Given the annotated graph of its
//! current data ([`Tape::simulate`], which QAT's trainer calls after every optimizer step), the
//! tape therefore takes the consumers' values (`vals`) of every node with an integer plan from
//! the simulation (`engine::sim`, equal to the int8 engine bit for bit): the FP32 kernels on the
//! integers, then the kernels' requantization. The value before rounding (`pre`) stays the
//! float one: for Conv and Gemm the simulation's exact accumulator scaled by `sx · sw`, with
//! the fused clamp (the float op's forward is then skipped, as the op keeps nothing for its
//! backward), and for the other integer nodes (Add, Mul, tables, average pools) the float op's
//! output, computed alongside. The other values (data movement, max pools, float nodes) are
//! fake-quantized as above, which is what the int8 engine computes for them too.
//!
//! Two buffers per quantized value survive the frame: the value as its consumers read it
//! (`vals`) and the value before rounding (`pre`), which the straight-through estimator and the
//! step-size gradient need. All buffers are allocated once, at the first frame.
//!
//! A value that only selects elements of values on its own grid (a MaxPool, Reshape or
//! Concat whose inputs share its parameters, the ReLU folded into an Add's range) is
//! already on that grid: its fake quantization is the identity, in the forward (bit for bit,
//! `fake_quant::tests::fake_quantization_is_the_identity_on_its_grid`) and in the backward
//! (every element in range, `∂x̂/∂s = round(t) - t = 0`). The tape skips it, and keeps one
//! buffer for such a value ([`on_grid`]).
//!
//! # Backward
//! Seeds (the loss gradients of some values) are added, then nodes run in reverse: the
//! gradients of a node's outputs first go through their fake quantization's backward (which
//! also accumulates `∂L/∂s` per value), then the op adds into zeroed buffers for the inputs
//! that need a gradient (or writes them whole, unzeroed, where it says it overwrites them:
//! pointwise convs, elementwise ops, copies), and the tape sums those into each
//! input's gradient. Gradient buffers of
//! activations come from a pool and go back to it once their producer has run, so memory is the
//! activations of one frame plus a few gradients.
//!
//! A value needs a gradient when something trainable is upstream of it: a trainable constant,
//! a quantized value whose step size is learned, or a graph input asked for (tests). Gradients
//! of trainable constants and of graph inputs accumulate across frames until
//! [`zero_grads`](Tape::zero_grads).
//!
//! Tests: every op through this tape against finite differences (in `ops`), and small graphs
//! with shared values, several consumers, fake quantization and the simulation here; the
//! trainer's forward against the int8 engine on the shipped models in `tests/sim_vs_int8.rs`.

use super::fake_quant::FakeQuant;
use super::ops::{self, add_into, Bwd, Fwd, Scratch, TrainOp};
use crate::engine::sim::{self, PlanCache, SimNode, SimScratch};
use crate::ir::{Activation, Graph, Op, PadMode, ReduceOp, ResizeMode, ValueId};
use crate::{Error, Result};

/// What a tape trains and how it quantizes.
#[derive(Clone, Debug, Default)]
pub struct TapeSpec {
    /// Per value: a constant whose gradient is wanted (its data can be changed, see
    /// [`Tape::const_data_mut`]).
    pub trainable: Vec<bool>,
    /// Per value: the fake quantization of an activation (graph inputs included).
    pub quant: Vec<Option<FakeQuant>>,
    /// Per value: accumulate the step-size gradient of its fake quantization.
    pub scale_grad: Vec<bool>,
    /// Keep the gradients of the graph inputs (finite-difference tests).
    pub input_grads: bool,
}

pub struct Tape {
    g: Graph,
    ops: Vec<Box<dyn TrainOp>>,
    quant: Vec<Option<FakeQuant>>,
    /// Per value: its fake quantization is the identity (see [`on_grid`]), as of the last
    /// forward.
    on_grid: Vec<bool>,
    scale_grad: Vec<bool>,
    needs: Vec<bool>,
    /// Gradients kept across backward passes (trainable constants, graph inputs in tests).
    keep: Vec<bool>,
    /// Current data of trainable constants.
    consts: Vec<Option<Vec<f32>>>,
    vals: Vec<Vec<f32>>,
    pre: Vec<Vec<f32>>,
    aux: Vec<Vec<f32>>,
    grads: Vec<Option<Vec<f32>>>,
    scale_grads: Vec<f64>,
    pool: Vec<Vec<f32>>,
    scratch: Scratch,
    zeros: Vec<f32>,
    prepared: bool,
    /// Per value: a trainable constant changed since the last [`prepare`](Tape::prepare)
    /// (all of them count as changed until the first).
    dirty: Vec<bool>,
    packed_once: bool,
    /// Per node: its integer simulation (`engine::sim`) from [`simulate`](Tape::simulate), or
    /// none (the node's outputs are fake-quantized). Empty without a simulation.
    sim: Vec<Option<SimNode>>,
    sim_scratch: SimScratch,
    /// What one simulation's plans keep for the next (weights that did not change).
    plan_cache: PlanCache,
    /// Per node: its op's forward keeps nothing for the backward (`aux` stays empty), learnt at
    /// its first forward. Such a forward is skipped where the simulation gives the values
    /// before rounding itself.
    aux_free: Vec<Option<bool>>,
    /// Per node: seconds in forward, in the fake-quant backward of its outputs, in its backward.
    profile: Option<Vec<[f64; 3]>>,
}

/// Wall-clock seconds since an arbitrary origin: `Instant` natively, `performance.now()` on
/// wasm32 (in a page, a worker and Node), read only while profiling.
pub(crate) fn clock() -> f64 {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_secs_f64()
    }
    #[cfg(target_arch = "wasm32")]
    {
        #[wasm_bindgen::prelude::wasm_bindgen]
        extern "C" {
            #[wasm_bindgen(js_namespace = performance, js_name = now)]
            fn performance_now() -> f64;
        }
        performance_now() * 1e-3
    }
}

/// Per value: whether it needs a gradient, that is whether something upstream of it does:
/// a kept gradient (a trainable constant, a graph input asked for) or a learned step size.
fn needs_of(g: &Graph, keep: &[bool], scale_grad: &[bool]) -> Vec<bool> {
    let mut needs: Vec<bool> = keep.iter().zip(scale_grad).map(|(&k, &s)| k || s).collect();
    for node in &g.nodes {
        if node.inputs.iter().any(|&i| needs[i]) {
            node.outputs.iter().for_each(|&o| needs[o] = true);
        }
    }
    needs
}

impl Tape {
    pub fn new(g: Graph, spec: TapeSpec) -> Result<Tape> {
        g.validate()?;
        let nv = g.values.len();
        let get = |v: &[bool], i: usize| v.get(i).copied().unwrap_or(false);
        let mut quant = spec.quant.clone();
        quant.resize(nv, None);
        let mut keep = vec![false; nv];
        let mut consts = vec![None; nv];
        for v in 0..nv {
            let value = &g.values[v];
            if value.is_const() {
                quant[v] = None; // constants already hold their quantized data
                if get(&spec.trainable, v) {
                    keep[v] = true;
                    consts[v] = value.data.as_ref().map(|d| d.to_vec());
                }
            }
        }
        if spec.input_grads {
            for &i in &g.inputs {
                keep[i] = true;
            }
        }
        let scale_grad: Vec<bool> = (0..nv).map(|v| get(&spec.scale_grad, v) && quant[v].is_some()).collect();
        let needs = needs_of(&g, &keep, &scale_grad);
        let ops = g
            .nodes
            .iter()
            .map(|node| {
                let wants: Vec<bool> = node.inputs.iter().map(|&i| needs[i]).collect();
                ops::build(&g, node, &wants)
            })
            .collect::<Result<Vec<_>>>()?;
        let max_out = g.nodes.iter().flat_map(|n| n.outputs.iter().map(|&o| g.values[o].len())).max().unwrap_or(0);
        Ok(Tape {
            ops,
            on_grid: vec![false; nv],
            quant,
            scale_grad,
            needs,
            keep,
            consts,
            vals: vec![Vec::new(); nv],
            pre: vec![Vec::new(); nv],
            aux: vec![Vec::new(); g.nodes.len()],
            grads: vec![None; nv],
            scale_grads: vec![0.0; nv],
            pool: Vec::new(),
            scratch: Scratch::default(),
            zeros: vec![0.0; max_out],
            prepared: false,
            dirty: vec![false; nv],
            packed_once: false,
            sim: Vec::new(),
            sim_scratch: SimScratch::default(),
            plan_cache: PlanCache::default(),
            aux_free: vec![None; g.nodes.len()],
            profile: None,
            g,
        })
    }

    /// Stops training `values`: a trainable constant keeps its current data as the graph's
    /// and gets no gradient any more; a quantized value stops accumulating its step-size
    /// gradient. Whatever needed a gradient only for them stops getting one, and the ops whose
    /// inputs' needs changed are rebuilt (their constants are packed again at the next
    /// [`prepare`](Self::prepare), which must come before the next forward). A simulation
    /// stays valid: no data or quantization changes.
    pub fn freeze(&mut self, values: &[ValueId]) -> Result<()> {
        for &v in values {
            if let Some(data) = self.consts[v].take() {
                self.g.values[v].data = Some(std::sync::Arc::new(data));
                self.keep[v] = false;
                self.grads[v] = None;
            }
            self.scale_grad[v] = false;
        }
        let needs = needs_of(&self.g, &self.keep, &self.scale_grad);
        for (n, node) in self.g.nodes.iter().enumerate() {
            if node.inputs.iter().all(|&i| needs[i] == self.needs[i]) {
                continue;
            }
            let wants: Vec<bool> = node.inputs.iter().map(|&i| needs[i]).collect();
            self.ops[n] = ops::build(&self.g, node, &wants)?;
            self.aux[n] = Vec::new();
            self.aux_free[n] = None;
            node.inputs.iter().for_each(|&i| self.dirty[i] = true);
            self.prepared = false;
        }
        self.needs = needs;
        Ok(())
    }

    pub fn graph(&self) -> &Graph {
        &self.g
    }

    /// Starts (or stops) timing every node.
    pub fn set_profiling(&mut self, on: bool) {
        self.profile = on.then(|| vec![[0.0; 3]; self.g.nodes.len()]);
    }

    /// Bytes the tape holds: saved values, pooled gradients, trainable constants, scratch.
    pub fn memory_bytes(&self) -> usize {
        let vecs = |v: &[Vec<f32>]| v.iter().map(|b| b.capacity()).sum::<usize>();
        let s = &self.scratch;
        let scratch = [&s.conv, &s.t0, &s.t1, &s.t2, &s.t3, &s.t4].iter().map(|b| b.capacity()).sum::<usize>();
        let kept = self.grads.iter().flatten().map(|b| b.capacity()).sum::<usize>();
        let consts = self.consts.iter().flatten().map(|b| b.capacity()).sum::<usize>();
        let plans = self.sim.iter().flatten().map(|s| s.packed_bytes()).sum::<usize>() + self.plan_cache.bytes();
        4 * (vecs(&self.vals) + vecs(&self.pre) + vecs(&self.aux) + vecs(&self.pool) + scratch + kept + consts) + plans
    }

    /// Seconds per node so far: forward, fake-quant backward of its outputs, backward.
    pub fn profile(&self) -> Option<&[[f64; 3]]> {
        self.profile.as_deref()
    }

    /// The current data of a trainable constant, to change before the next
    /// [`prepare`](Self::prepare) (the next forward prepares if needed).
    pub fn const_data_mut(&mut self, v: ValueId) -> &mut [f32] {
        self.prepared = false;
        self.dirty[v] = true;
        self.sim.clear();
        self.consts[v].as_deref_mut().expect("only trainable constants change")
    }

    /// The data of a constant as the forward reads it.
    pub fn const_data(&self, v: ValueId) -> Option<&[f32]> {
        self.consts[v].as_deref().or_else(|| self.g.const_data(v))
    }

    /// Changes the fake quantization of an activation (a learned step size).
    pub fn set_quant(&mut self, v: ValueId, q: FakeQuant) {
        assert!(self.quant[v].is_some(), "only quantized values change their quantization");
        if self.quant[v] != Some(q) {
            self.sim.clear();
        }
        self.quant[v] = Some(q);
    }

    pub fn quant(&self, v: ValueId) -> Option<FakeQuant> {
        self.quant[v]
    }

    /// True when value `v` gets a gradient.
    pub fn needs_grad(&self, v: ValueId) -> bool {
        self.needs[v]
    }

    /// Packs the ops' constants (weights) that changed since the last call (every op's at
    /// the first): once per optimizer step, and only what the step changed (in scales mode the
    /// biases, not the weights).
    pub fn prepare(&mut self) {
        let Tape { g, ops, consts, dirty, packed_once, .. } = self;
        for (node, op) in g.nodes.iter().zip(ops.iter_mut()) {
            let changed: Vec<bool> = node.inputs.iter().map(|&i| !*packed_once || dirty[i]).collect();
            if !changed.iter().any(|&c| c) {
                continue;
            }
            let data: Vec<Option<&[f32]>> = node.inputs.iter().map(|&i| consts[i].as_deref().or_else(|| g.const_data(i))).collect();
            op.prepare(&data, &changed);
        }
        dirty.fill(false);
        *packed_once = true;
        self.prepared = true;
    }

    /// Makes the forward compute the int8 engine's values: those of `graph`'s simulation
    /// (`engine::sim`, which the int8 engine equals bit for bit), where `graph` is the tape's
    /// graph annotated with the tape's current quantization and holding its current constants
    /// (QAT's export of its parameters). Outputs of nodes with an integer plan then hold the
    /// simulation's values, and their values before rounding (for the estimator and the
    /// step-size gradient) are the float node's: for Conv and Gemm computed from the exact
    /// accumulator instead (the same quantity within f32 rounding, without a second
    /// convolution). Other values are fake-quantized as before. Until the next call, a change of
    /// a constant or of a quantization ends the simulation (the forward goes back to fake
    /// quantization), since the plans hold the integers of the old parameters.
    ///
    /// Returns false, and fake-quantizes every value, when `graph` has no integer plan (no
    /// annotation, or annotations the int8 engine rejects). Errors (and fake-quantizes) when
    /// `graph` is not the tape's graph with its quantization and trainable constants.
    pub fn simulate(&mut self, graph: &Graph) -> Result<bool> {
        self.sim.clear();
        self.check_same_model(graph)?;
        self.sim = sim::plan_reusing(graph, &mut self.plan_cache).unwrap_or_default();
        Ok(!self.sim.is_empty())
    }

    /// True while the forward follows the int8 engine ([`simulate`](Self::simulate)).
    pub fn is_simulated(&self) -> bool {
        !self.sim.is_empty()
    }

    /// `graph` has the tape's nodes, its quantization and its trainable constants' data.
    fn check_same_model(&self, graph: &Graph) -> Result<()> {
        let g = &self.g;
        let bad = |msg: String| Err(Error::Invalid(format!("the simulated graph is not the tape's model: {msg}")));
        if graph.values.len() != g.values.len() || graph.inputs != g.inputs || graph.outputs != g.outputs || graph.nodes.len() != g.nodes.len() {
            return bad("other values, inputs, outputs or nodes".into());
        }
        if let Some(n) = graph.nodes.iter().zip(&g.nodes).position(|(a, b)| a.op != b.op || a.inputs != b.inputs || a.outputs != b.outputs) {
            return bad(format!("node '{}' differs", g.nodes[n].name));
        }
        for (v, (a, b)) in graph.values.iter().zip(&g.values).enumerate() {
            if a.shape != b.shape || a.is_const() != b.is_const() {
                return bad(format!("value '{}' differs", b.name));
            }
            if let (Some(mine), Some(theirs)) = (&self.consts[v], a.data.as_deref()) {
                if mine.iter().zip(theirs).any(|(x, y)| x.to_bits() != y.to_bits()) {
                    return bad(format!("the data of '{}' differs", b.name));
                }
            }
            if !a.is_const() && a.quant.as_ref().and_then(|q| q.tensor()).map(FakeQuant::new) != self.quant[v] {
                return bad(format!("the quantization of '{}' differs", b.name));
            }
        }
        Ok(())
    }

    /// Runs one frame (one tensor per graph input), keeping what the backward needs.
    pub fn forward(&mut self, inputs: &[&[f32]]) -> Result<()> {
        if !self.prepared {
            self.prepare();
        }
        let Tape { g, ops, quant, on_grid, consts, vals, pre, aux, scratch, sim, sim_scratch, aux_free, profile, .. } = self;
        if inputs.len() != g.inputs.len() {
            return Err(Error::Invalid(format!("the model takes {} inputs, {} were given", g.inputs.len(), inputs.len())));
        }
        for (&id, x) in g.inputs.iter().zip(inputs) {
            let v = &g.values[id];
            if x.len() != v.len() {
                return Err(Error::Input { name: v.name.clone(), msg: format!("has {} values, shape {:?} needs {}", x.len(), v.shape, v.len()) });
            }
            vals[id].resize(x.len(), 0.0);
            match quant[id] {
                Some(q) => {
                    pre[id].clear();
                    pre[id].extend_from_slice(x);
                    q.forward(x, &mut vals[id]);
                }
                None => vals[id].copy_from_slice(x),
            }
        }
        on_grid.fill(false);
        for (n, node) in g.nodes.iter().enumerate() {
            let t0 = if profile.is_some() { clock() } else { 0.0 };
            for &o in &node.outputs {
                on_grid[o] = self::on_grid(g, node, quant, o);
            }
            // An on-grid value is the float op's output itself, which is what the integer plan
            // would compute (a folded ReLU's table is the identity above the zero point).
            let plan = sim.get(n).and_then(Option::as_ref).filter(|_| !on_grid[node.outputs[0]]);
            let mut outs: Vec<Vec<f32>> = node
                .outputs
                .iter()
                .map(|&o| {
                    let mut b = std::mem::take(if quant[o].is_some() && !on_grid[o] { &mut pre[o] } else { &mut vals[o] });
                    b.resize(g.values[o].len(), 0.0);
                    b
                })
                .collect();
            // A planned node's only output: every integer plan has one, quantized (checked by
            // `simulate`: the graph's annotations are the tape's).
            let mut simulated = plan.map(|_| std::mem::take(&mut vals[node.outputs[0]]));
            {
                let args: Vec<&[f32]> = node.inputs.iter().map(|&i| consts[i].as_deref().or_else(|| g.const_data(i)).unwrap_or(&vals[i])).collect();
                // Where the simulation gives the values before rounding (Conv, Gemm: from the
                // exact accumulator), the float forward is only needed for what the op keeps
                // for its backward; the first forward finds out whether that is anything.
                let gives_real = plan.is_some_and(|p| p.gives_real());
                if !(gives_real && aux_free[n] == Some(true)) {
                    ops[n].forward(&mut Fwd { x: &args, y: &mut outs, aux: &mut aux[n], scratch });
                    aux_free[n] = Some(aux[n].is_empty());
                }
                if let (Some(p), Some(out)) = (plan, simulated.as_mut()) {
                    out.resize(outs[0].len(), 0.0);
                    let real = (gives_real && aux_free[n] == Some(true)).then_some(&mut outs[0][..]);
                    p.run_into(g, node, &args, sim_scratch, out, real)?;
                }
            }
            for (k, (&o, b)) in node.outputs.iter().zip(outs).enumerate() {
                let simulated = if k == 0 { simulated.take() } else { None };
                match (quant[o], simulated) {
                    (Some(_), Some(s)) => {
                        vals[o] = s;
                        pre[o] = b;
                    }
                    (Some(_), None) if on_grid[o] => vals[o] = b,
                    (Some(q), None) => {
                        vals[o].resize(b.len(), 0.0);
                        q.forward(&b, &mut vals[o]);
                        pre[o] = b;
                    }
                    (None, _) => vals[o] = b,
                }
            }
            if let Some(p) = profile.as_mut() {
                p[n][0] += clock() - t0;
            }
        }
        Ok(())
    }

    /// A value of the last forward as its consumers read it (on its grid where annotated: the
    /// simulation's value, or the fake quantization of the float one).
    pub fn value(&self, v: ValueId) -> &[f32] {
        self.const_data(v).unwrap_or(&self.vals[v])
    }

    /// A value of the last forward before fake quantization.
    pub fn pre_quant(&self, v: ValueId) -> &[f32] {
        if self.quant[v].is_some() && !self.on_grid[v] {
            &self.pre[v]
        } else {
            self.value(v)
        }
    }

    /// The graph outputs of the last forward.
    pub fn outputs(&self) -> Vec<&[f32]> {
        self.g.outputs.iter().map(|&o| self.value(o)).collect()
    }

    /// Zeroes the kept gradients and the step-size gradients.
    pub fn zero_grads(&mut self) {
        for (g, &k) in self.grads.iter_mut().zip(&self.keep) {
            if k {
                if let Some(g) = g {
                    g.fill(0.0);
                }
            }
        }
        self.scale_grads.fill(0.0);
    }

    /// The accumulated gradient of a trainable constant or (tests) a graph input.
    pub fn grad(&self, v: ValueId) -> Option<&[f32]> {
        self.grads[v].as_deref()
    }

    /// The accumulated `Σ ∂L/∂x̂ · ∂x̂/∂s` of a quantized value (without the LSQ factor).
    pub fn scale_grad(&self, v: ValueId) -> f64 {
        self.scale_grads[v]
    }

    /// A buffer of `len` from the pool, zeroed when `zero` (else its contents are stale).
    fn acquire(pool: &mut Vec<Vec<f32>>, len: usize, zero: bool) -> Vec<f32> {
        let i = pool.iter().position(|b| b.capacity() >= len).or(if pool.is_empty() { None } else { Some(pool.len() - 1) });
        let mut b = i.map(|i| pool.swap_remove(i)).unwrap_or_default();
        if zero {
            b.clear();
        } else {
            b.truncate(len);
        }
        b.resize(len, 0.0);
        b
    }

    fn accumulate(grads: &mut [Option<Vec<f32>>], pool: &mut Vec<Vec<f32>>, v: ValueId, d: Vec<f32>) {
        match &mut grads[v] {
            Some(g) => {
                add_into(g, &d);
                pool.push(d);
            }
            slot @ None => *slot = Some(d),
        }
    }

    /// Backward of the last forward from `seeds` (`∂L/∂v` of some values, as consumers read
    /// them). Gradients of trainable constants and step sizes accumulate.
    pub fn backward(&mut self, seeds: &[(ValueId, &[f32])]) {
        let Tape { g, ops, quant, on_grid, scale_grad, needs, keep, consts, vals, pre, aux, grads, scale_grads, pool, scratch, zeros, profile, .. } = self;
        for &(v, s) in seeds {
            if needs[v] {
                let mut b = Self::acquire(pool, s.len(), false);
                b.copy_from_slice(s);
                Self::accumulate(grads, pool, v, b);
            }
        }
        for (n, node) in g.nodes.iter().enumerate().rev() {
            if !node.outputs.iter().any(|&o| grads[o].is_some()) {
                continue;
            }
            let t0 = if profile.is_some() { clock() } else { 0.0 };
            for &o in node.outputs.iter().filter(|&&o| !on_grid[o]) {
                if let (Some(q), Some(gr)) = (quant[o], grads[o].as_deref_mut()) {
                    let ds = q.backward(&pre[o], gr);
                    if scale_grad[o] {
                        scale_grads[o] += ds;
                    }
                }
            }
            let t1 = if profile.is_some() { clock() } else { 0.0 };
            if node.inputs.iter().any(|&i| needs[i]) {
                let op = &ops[n];
                let mut dx: Vec<Option<Vec<f32>>> =
                    node.inputs.iter().enumerate().map(|(k, &i)| needs[i].then(|| Self::acquire(pool, g.values[i].len(), !op.overwrites_dx(k)))).collect();
                {
                    let args: Vec<&[f32]> = node.inputs.iter().map(|&i| consts[i].as_deref().or_else(|| g.const_data(i)).unwrap_or(&vals[i])).collect();
                    let ys: Vec<&[f32]> = node.outputs.iter().map(|&o| if quant[o].is_some() && !on_grid[o] { &pre[o][..] } else { &vals[o][..] }).collect();
                    let dys: Vec<&[f32]> = node.outputs.iter().map(|&o| grads[o].as_deref().unwrap_or(&zeros[..g.values[o].len()])).collect();
                    ops[n].backward(&mut Bwd { x: &args, y: &ys, aux: &aux[n], dy: &dys, dx: &mut dx, scratch });
                }
                for (&i, d) in node.inputs.iter().zip(dx) {
                    if let Some(d) = d {
                        Self::accumulate(grads, pool, i, d);
                    }
                }
            }
            for &o in &node.outputs {
                if let Some(b) = grads[o].take() {
                    pool.push(b);
                }
            }
            if let Some(p) = profile.as_mut() {
                let t2 = clock();
                p[n][1] += t1 - t0;
                p[n][2] += t2 - t1;
            }
        }
        for &i in &g.inputs {
            if let (Some(q), Some(gr)) = (quant[i], grads[i].as_deref_mut()) {
                let ds = q.backward(&pre[i], gr);
                if scale_grad[i] {
                    scale_grads[i] += ds;
                }
            }
            if !keep[i] {
                if let Some(b) = grads[i].take() {
                    pool.push(b);
                }
            }
        }
    }
}

/// True when output `o` of `node` is on its grid without rounding: the node only selects
/// elements of its inputs (or zeros, which every grid holds: zero points are integers), and
/// every input is an activation with `o`'s fake quantization. Constants are not on a grid.
fn on_grid(g: &Graph, node: &crate::ir::Node, quant: &[Option<FakeQuant>], o: ValueId) -> bool {
    let selects = match &node.op {
        Op::Reshape { .. } | Op::Transpose { .. } | Op::Concat { .. } | Op::Split { .. } | Op::Slice { .. } | Op::Gather { .. } => true,
        Op::Activation(Activation::Relu) | Op::GlobalMaxPool | Op::Reduce { op: ReduceOp::Max | ReduceOp::Min, .. } => true,
        Op::Resize { mode: ResizeMode::Nearest, .. } => true,
        Op::Pad { mode, .. } => !matches!(mode, PadMode::Constant(v) if *v != 0.0),
        // Padding is -inf: a window must reach the input for its maximum to be an input element.
        Op::MaxPool { window: w, .. } => (0..4).all(|p| w.pads[p] < w.dilations[p % 2] * (w.kernel[p % 2] - 1) + 1),
        _ => false,
    };
    selects && quant[o].is_some() && node.inputs.iter().all(|&i| !g.values[i].is_const() && quant[i] == quant[o])
}

#[cfg(test)]
mod tests {
    use super::super::gradcheck::{check_graph, Builder};
    use super::*;
    use crate::ir::{Activation, BinaryOp, Op, Window2d};
    use crate::quant::params::{from_range, QuantParams};
    use crate::quant::Quant;

    #[test]
    fn shared_values_and_several_consumers_sum_their_gradients() {
        // y = tanh(W x) · (W x) + (W x): the conv output is read three times, and a second
        // conv shares the weight of the first.
        let mut b = Builder::new(11);
        let x = b.input("x", &[1, 3, 5, 4]);
        let w = b.konst("w", &[3, 3, 1, 1]);
        let c = b.conv("c", x, w, None, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let t = b.one("t", Op::Activation(Activation::Tanh), &[c]);
        let m = b.one("m", Op::Binary(BinaryOp::Mul), &[t, c]);
        let a = b.one("a", Op::Binary(BinaryOp::Add), &[m, c]);
        let c2 = b.conv("c2", a, w, None, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let (g, inputs) = b.finish(&[c2, t]);
        check_graph(&g, &inputs, 1e-2, 2e-3, 0);
    }

    #[test]
    fn changed_constants_are_repacked_and_the_forward_follows_them() {
        // Pointwise, depthwise and a Gemm: after a change of
        // only the biases (what a scales-mode step changes), then of the weights, the forward
        // is the engine's on the changed graph and the input gradient matches the engine's
        // finite differences.
        let mut b = Builder::new(31);
        let x = b.input("x", &[1, 3, 6, 5]);
        let w1 = b.konst("w1", &[4, 3, 1, 1]);
        let b1 = b.konst("b1", &[4]);
        let c1 = b.conv("c1", x, w1, Some(b1), [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let w2 = b.konst("w2", &[4, 1, 3, 3]);
        let b2 = b.konst("b2", &[4]);
        let c2 = b.conv("c2", c1, w2, Some(b2), [3, 3], 1, [1; 4], 1, 4, Activation::Identity);
        let flat = b.one("flat", Op::Reshape { shape: vec![1, 120] }, &[c2]);
        let w3 = b.konst("w3", &[5, 120]);
        let b3 = b.konst("b3", &[5]);
        let y = b.one("fc", Op::Gemm { trans_a: false, trans_b: true, alpha: 1.0, beta: 1.0, activation: Activation::Identity }, &[flat, w3, b3]);
        let (mut g, inputs) = b.finish(&[y]);
        let mut trainable = vec![false; g.values.len()];
        for v in [b1, b2, b3, w1, w2, w3] {
            trainable[v] = true;
        }
        let mut tape = Tape::new(g.clone(), TapeSpec { trainable, input_grads: true, ..Default::default() }).unwrap();
        let x0 = &inputs[0];
        tape.forward(&[x0]).unwrap();
        for (round, changed) in [[b1, b2, b3], [w1, w2, w3]].iter().enumerate() {
            for &v in changed {
                let d = tape.const_data_mut(v);
                d.iter_mut().enumerate().for_each(|(i, e)| *e += 0.05 * (i % 3) as f32 - 0.04 * round as f32);
                g.values[v].data = Some(std::sync::Arc::new(d.to_vec()));
            }
            tape.forward(&[x0]).unwrap();
            let engine = crate::engine::Fp32Engine::new(g.clone());
            assert_eq!(tape.outputs()[0], &engine.run(&[x0]).unwrap()[0][..], "round {round}");
            tape.zero_grads();
            let seed: Vec<f32> = (0..5).map(|i| i as f32 - 2.0).collect();
            tape.backward(&[(y, &seed)]);
            let dx = tape.grad(x).unwrap().to_vec();
            let loss = |xs: &[f32]| engine.run(&[xs]).unwrap()[0].iter().zip(&seed).map(|(a, b)| (a * b) as f64).sum::<f64>();
            for e in [0, 7, 29, 41, 89] {
                let (mut up, mut down) = (x0.clone(), x0.clone());
                up[e] += 1e-2;
                down[e] -= 1e-2;
                let numeric = (loss(&up) - loss(&down)) / 2e-2;
                assert!((dx[e] as f64 - numeric).abs() < 3e-3 * numeric.abs().max(1.0), "round {round} dx[{e}]: {} vs {numeric}", dx[e]);
            }
        }
    }

    /// The annotated graph a calibrator makes of a small float graph: a 3x3 conv (Relu6), a
    /// depthwise conv (Relu), a pointwise one and a residual Add, x · sigmoid(x) (a table and a
    /// Mul), an average and a max pool, a global average, a Gemm (Relu); and its spec (every
    /// annotation fake-quantized, weights and biases trainable).
    fn quantized_graph() -> (Graph, TapeSpec, Vec<Vec<f32>>) {
        use crate::quant::ptq::{Calibrator, QuantConfig};
        let mut b = Builder::new(41);
        let x = b.input("x", &[1, 3, 10, 9]);
        let w1 = b.konst("w1", &[6, 3, 3, 3]);
        let b1 = b.konst("b1", &[6]);
        let c1 = b.conv("c1", x, w1, Some(b1), [3, 3], 1, [1; 4], 1, 1, Activation::Clip { min: 0.0, max: 6.0 });
        let w2 = b.konst("w2", &[6, 1, 3, 3]);
        let b2 = b.konst("b2", &[6]);
        let c2 = b.conv("c2", c1, w2, Some(b2), [3, 3], 1, [1; 4], 1, 6, Activation::Relu);
        let w3 = b.konst("w3", &[6, 6, 1, 1]);
        let c3 = b.conv("c3", c2, w3, None, [1, 1], 1, [0; 4], 1, 1, Activation::Identity);
        let add = b.one("add", Op::Binary(BinaryOp::Add), &[c3, c1]);
        let sig = b.one("sig", Op::Activation(Activation::Sigmoid), &[add]);
        let mul = b.one("mul", Op::Binary(BinaryOp::Mul), &[add, sig]);
        let window = |k: usize, s: usize| crate::ir::Window2d { kernel: [k, k], strides: [s, s], dilations: [1, 1], pads: [0; 4] };
        let avg = b.one("avg", Op::AveragePool { window: window(2, 2), ceil_mode: false, count_include_pad: false }, &[mul]);
        let max = b.one("max", Op::MaxPool { window: window(2, 1), ceil_mode: false }, &[avg]);
        let gap = b.one("gap", Op::GlobalAveragePool, &[max]);
        let flat = b.one("flat", Op::Reshape { shape: vec![1, 6] }, &[gap]);
        let w4 = b.konst("w4", &[5, 6]);
        let b4 = b.konst("b4", &[5]);
        let y = b.one("fc", Op::Gemm { trans_a: false, trans_b: true, alpha: 1.0, beta: 1.0, activation: Activation::Relu }, &[flat, w4, b4]);
        let (g, _) = b.finish(&[y]);
        let mut rng = crate::rng::Rng::seeded(8);
        let frames: Vec<Vec<f32>> = (0..6).map(|_| (0..270).map(|_| rng.uniform(-1.0, 1.0) as f32).collect()).collect();
        let mut cal = Calibrator::new(&g, QuantConfig::default()).unwrap();
        for f in &frames[..3] {
            cal.observe(&[f]).unwrap();
        }
        let q = cal.quantize().unwrap();
        let nv = q.values.len();
        let spec = TapeSpec {
            trainable: q.values.iter().map(|v| v.is_const()).collect(),
            quant: q.values.iter().map(|v| if v.is_const() { None } else { v.quant.as_ref().and_then(|q| q.tensor()).map(FakeQuant::new) }).collect(),
            scale_grad: vec![true; nv],
            input_grads: true,
        };
        (q, spec, frames)
    }

    /// Both ways the simulation sums a convolution (the int8 kernels' accumulators, wasm's
    /// default; the FP32 kernels on integers, native's) give the int8 engine's values, before
    /// and after a weight changes, and after step sizes change; a re-plan packs again exactly
    /// the weights that changed (a new step size of a layer's input keeps its packing).
    #[test]
    fn both_convolution_sums_and_kept_weights_follow_the_int8_engine() {
        let (q, spec, frames) = quantized_graph();
        let (w3, w4) = (q.find_value("w3").unwrap(), q.find_value("w4").unwrap());
        let node_of = |w: ValueId| q.nodes.iter().position(|n| n.inputs.get(1) == Some(&w)).unwrap();
        for int8_sums in [false, true] {
            let mut tape = Tape::new(q.clone(), spec.clone()).unwrap();
            tape.plan_cache = PlanCache::with_int8_sums(int8_sums);
            let mut g = q.clone();
            let (mut ids, mut _held) = (Vec::new(), None);
            for round in 0..4 {
                assert!(tape.simulate(&g).unwrap());
                let int8 = crate::engine::Int8Engine::new(g.clone()).unwrap();
                for f in &frames {
                    tape.forward(&[f]).unwrap();
                    int8.run_observed(&[f], &mut |v, d| assert_eq!(tape.value(v), d, "int8 sums {int8_sums}, round {round}: {}", g.values[v].name)).unwrap();
                }
                let (now, held) = tape.plan_cache.packed_ids();
                match round {
                    0 => assert!(now[node_of(w3)] != 0 && now[node_of(w4)] != 0),
                    1 => {
                        assert_ne!(now[node_of(w3)], ids[node_of(w3)], "the changed weight is packed again");
                        assert_eq!(now[node_of(w4)], ids[node_of(w4)], "the unchanged weight is kept");
                    }
                    2 => assert_eq!(now, ids, "new step sizes keep every packing"),
                    _ => assert_eq!(now, ids, "nothing changed, everything is kept"),
                }
                (ids, _held) = (now, Some(held));
                if round == 1 {
                    // New step sizes of c3's input (c2's output) and output, zero points kept.
                    for v in [q.find_value("c2.0").unwrap(), q.find_value("c3.0").unwrap()] {
                        let Some(Quant::Tensor(p)) = g.values[v].quant.clone() else { panic!("c2 and c3 are quantized") };
                        let p = QuantParams { scale: p.scale * 1.37, ..p };
                        tape.set_quant(v, FakeQuant::new(&p));
                        g.values[v].quant = Some(Quant::Tensor(p));
                    }
                }
                if round == 0 {
                    // The pointwise weight negated: still on its grid (symmetric integers).
                    let d = tape.const_data_mut(w3);
                    d.iter_mut().for_each(|v| *v = -*v);
                    g.values[w3].data = Some(std::sync::Arc::new(d.to_vec()));
                }
            }
        }
    }

    #[test]
    fn a_simulated_forward_is_the_int8_engine_and_keeps_float_values_before_rounding() {
        let (q, spec, frames) = quantized_graph();
        let mut tape = Tape::new(q.clone(), spec.clone()).unwrap();
        let mut plain = Tape::new(q.clone(), spec).unwrap();
        assert!(tape.simulate(&q).unwrap() && tape.is_simulated());
        let int8 = crate::engine::Int8Engine::new(q.clone()).unwrap();
        let sim = crate::engine::Fp32Engine::new(q.clone());
        let (mut flips, mut grad_diff, mut grad_max) = (0usize, 0f32, 0f32);
        for f in &frames {
            tape.forward(&[f]).unwrap();
            plain.forward(&[f]).unwrap();
            let mut computed = 0;
            int8.run_observed(&[f], &mut |v, d| {
                assert_eq!(tape.value(v), d, "{}", q.values[v].name);
                computed += 1;
            })
            .unwrap();
            assert_eq!(computed, q.nodes.iter().map(|n| n.outputs.len()).sum::<usize>());
            assert_eq!(tape.outputs()[0], &sim.run(&[f]).unwrap()[0][..]);
            for (v, value) in q.values.iter().enumerate() {
                let Some(p) = tape.quant(v) else { continue };
                // Before rounding, the simulated forward holds the float values: the float op's
                // own, or the exact accumulator scaled, within f32 rounding of each other.
                let (a, b) = (tape.pre_quant(v), plain.pre_quant(v));
                let m = b.iter().fold(0f32, |m, x| m.max(x.abs()));
                assert!(a.iter().zip(b).all(|(a, b)| (a - b).abs() <= 1e-5 * m.max(1.0)), "{}", value.name);
                flips += tape.value(v).iter().zip(plain.value(v)).filter(|(a, b)| (*a - *b).abs() > 0.5 * p.scale).count();
            }
            let seed: Vec<f32> = (0..5).map(|i| i as f32 - 1.5).collect();
            for t in [&mut tape, &mut plain] {
                t.zero_grads();
                t.backward(&[(q.outputs[0], &seed)]);
            }
            let (a, b) = (tape.grad(q.inputs[0]).unwrap(), plain.grad(q.inputs[0]).unwrap());
            grad_diff = a.iter().zip(b).fold(grad_diff, |m, (a, b)| m.max((a - b).abs()));
            grad_max = b.iter().fold(grad_max, |m, b| m.max(b.abs()));
        }
        // Where the two forwards round an element differently (rare: what the simulation is
        // for), the backward follows; elsewhere it is the same function of the same values up to
        // f32 rounding.
        eprintln!("{flips} elements rounded differently; input gradients differ by {grad_diff:e} of {grad_max:e}");
        assert!(grad_diff <= 0.05 * grad_max, "{grad_diff} of {grad_max}");

        // A changed constant ends the simulation (its plans hold the old integers) until the
        // graph of the new data is given.
        let b1 = q.find_value("b1").unwrap();
        let mut changed = q.clone();
        let data = {
            let d = tape.const_data_mut(b1);
            d.iter_mut().for_each(|v| *v += 0.3);
            d.to_vec()
        };
        assert!(!tape.is_simulated());
        changed.values[b1].data = Some(std::sync::Arc::new(data));
        tape.forward(&[&frames[0]]).unwrap();
        assert_eq!(tape.outputs()[0], &crate::engine::Fp32Engine::fake_quantized(changed.clone()).run(&[&frames[0]]).unwrap()[0][..]);
        assert!(tape.simulate(&q).is_err(), "the old data");
        assert!(tape.simulate(&changed).unwrap());
        tape.forward(&[&frames[0]]).unwrap();
        assert_eq!(tape.outputs()[0], &crate::engine::Int8Engine::new(changed.clone()).unwrap().run(&[&frames[0]]).unwrap()[0][..]);
        // Another quantization, or a graph without integer plans, is refused.
        let mut other = changed.clone();
        let v = other.values.iter().position(|v| !v.is_const() && v.quant.is_some()).unwrap();
        if let Some(crate::quant::Quant::Tensor(p)) = &mut other.values[v].quant {
            p.scale *= 1.01;
        }
        assert!(tape.simulate(&other).is_err());
        let mut float = changed.clone();
        float.values.iter_mut().for_each(|v| v.quant = None);
        assert!(tape.simulate(&float).is_err());
        // A float graph has nothing to simulate.
        assert!(!Tape::new(float.clone(), TapeSpec::default()).unwrap().simulate(&float).unwrap());
    }

    #[test]
    fn fake_quantized_values_pass_gradients_straight_through_inside_their_range() {
        // x -> FQ -> Sigmoid -> FQ -> y, compared with the same graph without quantization
        // seen through the estimator: inside the range the gradient is the float one at x̂.
        let mut b = Builder::new(2);
        let x = b.input("x", &[2, 7]);
        let y = b.one("y", Op::Activation(Activation::Sigmoid), &[x]);
        let (g, inputs) = b.finish(&[y]);
        let qx = FakeQuant::new(&from_range(-1.0, 1.0, 8, false));
        let qy = FakeQuant::new(&from_range(0.0, 0.6, 8, false));
        let mut quant = vec![None; g.values.len()];
        quant[x] = Some(qx);
        quant[y] = Some(qy);
        let spec = TapeSpec { quant, scale_grad: vec![true; g.values.len()], input_grads: true, ..Default::default() };
        let mut tape = Tape::new(g.clone(), spec).unwrap();
        let data = &inputs[0];
        tape.forward(&[data]).unwrap();
        let seed: Vec<f32> = (0..14).map(|i| (i as f32 - 6.0) * 0.1).collect();
        tape.backward(&[(y, &seed)]);
        let dx = tape.grad(x).unwrap();
        let mut expected_ds_y = 0f64;
        for i in 0..14 {
            let xh = qx.apply(data[i]);
            let s = 1.0 / (1.0 + (-xh).exp());
            // ŷ's own estimator: clipped above 0.6 (the range of y).
            let ty = s / qy.scale;
            let ry = ty.round_ties_even();
            let inside_y = ry + qy.zero_point as f32 <= qy.qmax as f32;
            expected_ds_y += (seed[i] * if inside_y { ry - ty } else { (qy.qmax - qy.zero_point) as f32 }) as f64;
            let rx = (data[i] / qx.scale).round_ties_even() + qx.zero_point as f32;
            let inside_x = rx >= qx.qmin as f32 && rx <= qx.qmax as f32;
            let expected = if inside_y && inside_x { seed[i] * s * (1.0 - s) } else { 0.0 };
            assert!((dx[i] - expected).abs() < 1e-6, "{i}: {} vs {expected}", dx[i]);
        }
        assert!((tape.scale_grad(y) - expected_ds_y).abs() < 1e-5);
        assert_eq!(tape.value(y), {
            let mut sim = vec![0.0; 14];
            let e = crate::engine::Fp32Engine::new({
                let mut q = g.clone();
                q.values[x].quant = Some(crate::quant::Quant::Tensor(from_range(-1.0, 1.0, 8, false)));
                q.values[y].quant = Some(crate::quant::Quant::Tensor(from_range(0.0, 0.6, 8, false)));
                q
            });
            sim.copy_from_slice(&e.run(&[data]).unwrap()[0]);
            sim
        });
    }

    /// x -> FQ -> MaxPool -> Relu -> FQ(same) -> Sigmoid: the pool and the ReLU select values on
    /// x's grid, so the tape keeps one buffer for them (no value before rounding), gives them
    /// no step-size term, and still passes their gradients to x as the estimator does. With
    /// other parameters than x's, the ReLU's output is fake-quantized again.
    #[test]
    fn values_that_select_from_their_own_grid_skip_their_fake_quantization() {
        let mut b = Builder::new(5);
        let x = b.input("x", &[1, 2, 4, 4]);
        let window = Window2d { kernel: [2, 2], strides: [2, 2], dilations: [1, 1], pads: [0; 4] };
        let mp = b.one("mp", Op::MaxPool { window, ceil_mode: false }, &[x]);
        let r = b.one("r", Op::Activation(Activation::Relu), &[mp]);
        let y = b.one("y", Op::Activation(Activation::Sigmoid), &[r]);
        let (g, inputs) = b.finish(&[y]);
        let qx = FakeQuant::new(&from_range(-1.0, 1.0, 8, false));
        for other in [false, true] {
            let qr = if other { FakeQuant::new(&from_range(0.0, 1.3, 8, false)) } else { qx };
            let mut quant = vec![None; g.values.len()];
            (quant[x], quant[mp], quant[r]) = (Some(qx), Some(qx), Some(qr));
            let spec = TapeSpec { quant, scale_grad: vec![true; g.values.len()], input_grads: true, ..Default::default() };
            let mut tape = Tape::new(g.clone(), spec).unwrap();
            tape.forward(&[&inputs[0]]).unwrap();
            let seed = vec![1.0; 8];
            tape.backward(&[(y, &seed)]);
            let one_buffer = |v| std::ptr::eq(tape.pre_quant(v), tape.value(v));
            assert!(one_buffer(mp));
            assert_eq!(tape.scale_grad(mp), 0.0);
            assert_eq!(one_buffer(r), !other, "other parameters: {other}");
            assert_eq!(tape.scale_grad(r) != 0.0, other);
            // Each output's gradient reaches exactly one tap of its window, where x is inside
            // its range and the ReLU passes.
            let dx = tape.grad(x).unwrap();
            let xh: Vec<f32> = inputs[0].iter().map(|&v| qx.apply(v)).collect();
            for (o, &v) in tape.value(mp).iter().enumerate() {
                let (c, oh, ow) = (o / 4, o / 2 % 2, o % 2);
                let taps: Vec<usize> = (0..4).map(|t| c * 16 + (2 * oh + t / 2) * 4 + 2 * ow + t % 2).collect();
                let kept = *taps.iter().find(|&&i| xh[i] == v).unwrap();
                let inside = |i: usize| (inputs[0][i] / qx.scale).round_ties_even() + qx.zero_point as f32 <= qx.qmax as f32;
                assert!(taps.iter().all(|&i| (dx[i] != 0.0) == (i == kept && v > 0.0 && inside(i))), "output {o}");
            }
        }
    }
}
