//! Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) of consecutive
//! convolutions, the depthwise-separable stacks of mobile networks above all.
//!
//! A depthwise convolution's channels can span ranges that differ by orders of magnitude;
//! per-channel weight scales absorb that in the weights, but the activation between the two
//! layers is quantized per tensor, so its small channels lose their resolution. For `conv1`
//! feeding only `conv2`, with a positively homogeneous activation between (none, ReLU,
//! LeakyReLU: `f(x / s) = f(x) / s` for `s > 0`), dividing `conv1`'s output channel `i` (weights
//! and bias) by `s_i` and multiplying `conv2`'s input channel `i` by `s_i` leaves the model's
//! function unchanged. `s_i = sqrt(r1_i / r2_i)`, with `r1_i` the largest `|w|` of `conv1`'s
//! channel `i` and `r2_i` that of `conv2`'s input channel `i`, makes both ranges
//! `sqrt(r1_i · r2_i)`: the weights' channels become alike, and so do the activation's.
//! ReLU6 and other clips are not homogeneous (`min(x, 6) / s ≠ min(x / s, 6)`), so pairs with
//! them between are left alone (EfficientNet-Lite has only those).

use std::sync::Arc;

use crate::ir::{Graph, Op};
use crate::kernels::Activation;

/// Equalizes every eligible pair, chains included (one pass in graph order); returns how many
/// pairs were equalized. The graph computes the same function (up to float rounding).
pub fn equalize(g: &mut Graph) -> usize {
    let consumers = g.consumers();
    let mut done = 0;
    for n1 in 0..g.nodes.len() {
        let Op::Conv(c1) = &g.nodes[n1].op else { continue };
        let homogeneous = match c1.activation {
            Activation::Identity | Activation::Relu | Activation::LeakyRelu { .. } => true,
            Activation::Clip { min, max } => min == 0.0 && max == f32::INFINITY,
            _ => false,
        };
        let y = g.nodes[n1].outputs[0];
        if !homogeneous || g.outputs.contains(&y) || consumers[y].len() != 1 {
            continue;
        }
        let n2 = consumers[y][0];
        let Op::Conv(c2) = &g.nodes[n2].op else { continue };
        if g.nodes[n2].inputs[0] != y {
            continue;
        }
        let (w1, w2) = (g.nodes[n1].inputs[1], g.nodes[n2].inputs[1]);
        let (Some(d1), Some(d2)) = (g.const_data(w1), g.const_data(w2)) else { continue };
        let (s1, s2) = (&g.values[w1].shape, &g.values[w2].shape);
        let channels = s1[0];
        // conv2's input channel i: all of W2[:, i] (group 1), or its own filter (depthwise,
        // one output per input channel).
        let depthwise = c2.group == channels && s2[0] == channels && s2[1] == 1;
        if !(c2.group == 1 && s2[1] == channels) && !depthwise {
            continue;
        }
        // Weights shared with another node would change that node too.
        let shared = |w| g.nodes.iter().filter(|n| n.inputs.get(1) == Some(&w)).count() > 1;
        if shared(w1) || shared(w2) || g.nodes[n1].inputs.get(2).is_some_and(|&b| g.const_data(b).is_none()) {
            continue;
        }
        let per1 = d1.len() / channels;
        let r1: Vec<f32> = d1.chunks_exact(per1).map(|c| c.iter().fold(0f32, |m, w| m.max(w.abs()))).collect();
        let spatial = s2[2..].iter().product::<usize>();
        let r2: Vec<f32> = (0..channels)
            .map(|i| {
                if depthwise {
                    d2[i * spatial..(i + 1) * spatial].iter().fold(0f32, |m, w| m.max(w.abs()))
                } else {
                    (0..s2[0]).flat_map(|o| &d2[(o * channels + i) * spatial..][..spatial]).fold(0f32, |m, w| m.max(w.abs()))
                }
            })
            .collect();
        // A dead channel (all-zero weights on either side) keeps its scale.
        let s: Vec<f32> = r1.iter().zip(&r2).map(|(&a, &b)| if a > 0.0 && b > 0.0 { (a / b).sqrt() } else { 1.0 }).collect();
        let new1: Vec<f32> = d1.iter().enumerate().map(|(k, &w)| w / s[k / per1]).collect();
        let new2: Vec<f32> = d2
            .iter()
            .enumerate()
            .map(|(k, &w)| w * s[if depthwise { k / spatial } else { (k / spatial) % channels }])
            .collect();
        g.values[w1].data = Some(Arc::new(new1));
        g.values[w2].data = Some(Arc::new(new2));
        if let Some(&b) = g.nodes[n1].inputs.get(2) {
            // A bias shared with another node gets a copy of its own.
            let scaled: Vec<f32> = g.const_data(b).expect("checked above").iter().zip(&s).map(|(&v, &si)| v / si).collect();
            let name = format!("{}.bias_equalized", g.nodes[n1].name);
            let id = g.add_const(name, vec![channels], scaled);
            g.nodes[n1].inputs[2] = id;
        }
        done += 1;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Fp32Engine;
    use crate::ir::{Conv, Node, Value, Window2d};
    use crate::rng::Rng;

    /// x [1,4,6,6] → conv 3x3 (4→4, Relu, channels of very different ranges) → depthwise 3x3
    /// (Identity) → 1x1 (4→3): two equalizable pairs in a chain.
    fn stack(rng: &mut Rng) -> Graph {
        let mut g = Graph::default();
        let value = |g: &mut Graph, name: &str, shape: Vec<usize>, data: Option<Vec<f32>>| {
            g.values.push(Value { name: name.into(), shape, data: data.map(Arc::new), quant: None });
            g.values.len() - 1
        };
        let mut rand = |n: usize, scale: &dyn Fn(usize) -> f32| (0..n).map(|k| scale(k) * rng.uniform(-1.0, 1.0) as f32).collect::<Vec<f32>>();
        let x = value(&mut g, "x", vec![1, 4, 6, 6], None);
        let w1 = value(&mut g, "w1", vec![4, 4, 3, 3], Some(rand(144, &|k| [0.01, 1.0, 10.0, 0.1][k / 36])));
        let b1 = value(&mut g, "b1", vec![4], Some(rand(4, &|_| 0.5)));
        let y1 = value(&mut g, "y1", vec![1, 4, 6, 6], None);
        let w2 = value(&mut g, "w2", vec![4, 1, 3, 3], Some(rand(36, &|k| [5.0, 0.2, 1.0, 0.02][k / 9])));
        let y2 = value(&mut g, "y2", vec![1, 4, 6, 6], None);
        let w3 = value(&mut g, "w3", vec![3, 4, 1, 1], Some(rand(12, &|_| 1.0)));
        let b3 = value(&mut g, "b3", vec![3], Some(rand(3, &|_| 0.1)));
        let y3 = value(&mut g, "y3", vec![1, 3, 6, 6], None);
        let window = |k| Window2d { kernel: [k, k], strides: [1, 1], dilations: [1, 1], pads: [k / 2; 4] };
        let conv = |group, k, activation| Op::Conv(Conv { window: window(k), group, activation });
        g.nodes.push(Node { name: "c1".into(), op: conv(1, 3, Activation::Relu), inputs: vec![x, w1, b1], outputs: vec![y1] });
        g.nodes.push(Node { name: "dw".into(), op: conv(4, 3, Activation::Identity), inputs: vec![y1, w2], outputs: vec![y2] });
        g.nodes.push(Node { name: "pw".into(), op: conv(1, 1, Activation::Identity), inputs: vec![y2, w3, b3], outputs: vec![y3] });
        g.inputs = vec![x];
        g.outputs = vec![y3];
        g
    }

    #[test]
    fn equalized_stack_computes_the_same_with_alike_channel_ranges() {
        let mut rng = Rng::seeded(3);
        let g = stack(&mut rng);
        g.validate().unwrap();
        let mut e = g.clone();
        assert_eq!(equalize(&mut e), 2);
        e.validate().unwrap();
        let x: Vec<f32> = (0..144).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
        let (a, b) = (Fp32Engine::new(g.clone()).run(&[&x]).unwrap(), Fp32Engine::new(e.clone()).run(&[&x]).unwrap());
        let scale = a[0].iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(a[0].iter().zip(&b[0]).all(|(p, q)| (p - q).abs() <= 1e-5 * scale), "{a:?} vs {b:?}");
        // The depthwise filters, 250x apart before, now span well under 10x (the 1x1 after it
        // pulls them towards its own ranges).
        let ranges = |g: &Graph| -> Vec<f32> { g.const_data(g.find_value("w2").unwrap()).unwrap().chunks(9).map(|c| c.iter().fold(0f32, |m, w| m.max(w.abs()))).collect() };
        let spread = |r: Vec<f32>| r.iter().cloned().fold(0f32, f32::max) / r.iter().cloned().fold(f32::MAX, f32::min);
        assert!(spread(ranges(&g)) > 50.0 && spread(ranges(&e)) < 10.0, "{:?} -> {:?}", ranges(&g), ranges(&e));
    }

    #[test]
    fn clipped_shared_and_output_pairs_are_left_alone() {
        let mut rng = Rng::seeded(4);
        // ReLU6 between: not homogeneous.
        let mut g = stack(&mut rng);
        for n in &mut g.nodes {
            if let Op::Conv(c) = &mut n.op {
                c.activation = Activation::Clip { min: 0.0, max: 6.0 };
            }
        }
        let before = g.clone();
        assert_eq!(equalize(&mut g), 0);
        assert_eq!(g.values.len(), before.values.len());
        // The first conv's output also read by the graph: only the second pair.
        let mut g = stack(&mut rng);
        g.outputs.push(3);
        assert_eq!(equalize(&mut g), 1);
    }
}
