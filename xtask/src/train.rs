//! `cargo xtask fixtures train`: trains qa-tiny, a small llama-kind decoder, on the curriculum in
//! `modelqa::support::curriculum`, with candle on the CPU.
//!
//! candle-nn's fused RMSNorm, softmax and RoPE carry no gradient, so the training forward uses
//! plain ops (x/√(mean x²+ε)·w, exp(x−max)/Σ, rotate-half RoPE); the exported model is run by
//! candle-transformers' own model code, and a test checks the two agree.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use candle_core::{D, DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use modelqa::support::curriculum::{self, Rng};
use modelqa::support::progress;
use tokenizers::Tokenizer;

/// The model's shape. Hidden and intermediate sizes are multiples of 256, so every matrix can
/// be quantized to Q4_K.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_theta: f64,
    pub eps: f64,
}

pub const SHAPE: Shape = Shape {
    hidden: 256,
    intermediate: 512,
    layers: 2,
    heads: 4,
    kv_heads: 2,
    vocab: curriculum::VOCAB_SIZE,
    context: 128,
    rope_theta: 10_000.0,
    eps: 1e-5,
};

#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub steps: usize,
    pub batch: usize,
    pub peak_lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    pub warmup: usize,
    pub seed: u64,
}

/// The schedule `fixtures train` runs unless a flag says otherwise: the one the committed
/// weights were trained with (`fixtures/qa-tiny/training.json`; a test holds the two together).
pub const SCHEDULE: Schedule =
    Schedule { steps: 3200, batch: 128, peak_lr: 2e-3, weight_decay: 0.01, warmup: 150, seed: 20261122 };

struct Layer {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    gate: Tensor,
    up: Tensor,
    down: Tensor,
    norm1: Tensor,
    norm2: Tensor,
}

struct Model {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Tensor,
    cos: Tensor,
    sin: Tensor,
}

/// Seeded initial weights: N(0, 0.02), output projections scaled by 1/√(2·layers), norms 1.
fn init(shape: &Shape, seed: u64, dev: &Device) -> anyhow::Result<(Model, Vec<(String, Var)>)> {
    let mut rng = Rng::new(seed ^ 0x5EED);
    let mut vars: Vec<(String, Var)> = Vec::new();
    let std = 0.02;
    let deep = std / (2.0 * shape.layers as f64).sqrt();
    let mut normal = |name: String,
                      rows: usize,
                      cols: usize,
                      stdev: f64,
                      vars: &mut Vec<(String, Var)>|
     -> anyhow::Result<Tensor> {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| {
                let (u1, u2) = (rng.unit().max(1e-12), rng.unit());
                ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos() * stdev) as f32
            })
            .collect();
        let var = Var::from_tensor(&Tensor::from_vec(data, (rows, cols), dev)?)?;
        let t = var.as_tensor().clone();
        vars.push((name, var));
        Ok(t)
    };
    let ones = |name: String, n: usize, vars: &mut Vec<(String, Var)>| -> anyhow::Result<Tensor> {
        let var = Var::from_tensor(&Tensor::ones(n, DType::F32, dev)?)?;
        let t = var.as_tensor().clone();
        vars.push((name, var));
        Ok(t)
    };
    let head_dim = shape.hidden / shape.heads;
    let kv = shape.kv_heads * head_dim;
    let h = shape.hidden;
    let embed = normal("model.embed_tokens.weight".into(), shape.vocab, h, std, &mut vars)?;
    let mut layers = Vec::new();
    for l in 0..shape.layers {
        let p = format!("model.layers.{l}");
        layers.push(Layer {
            q: normal(format!("{p}.self_attn.q_proj.weight"), h, h, std, &mut vars)?,
            k: normal(format!("{p}.self_attn.k_proj.weight"), kv, h, std, &mut vars)?,
            v: normal(format!("{p}.self_attn.v_proj.weight"), kv, h, std, &mut vars)?,
            o: normal(format!("{p}.self_attn.o_proj.weight"), h, h, deep, &mut vars)?,
            gate: normal(format!("{p}.mlp.gate_proj.weight"), shape.intermediate, h, std, &mut vars)?,
            up: normal(format!("{p}.mlp.up_proj.weight"), shape.intermediate, h, std, &mut vars)?,
            down: normal(format!("{p}.mlp.down_proj.weight"), h, shape.intermediate, deep, &mut vars)?,
            norm1: ones(format!("{p}.input_layernorm.weight"), h, &mut vars)?,
            norm2: ones(format!("{p}.post_attention_layernorm.weight"), h, &mut vars)?,
        });
    }
    let norm = ones("model.norm.weight".into(), h, &mut vars)?;
    let head = normal("lm_head.weight".into(), shape.vocab, h, std, &mut vars)?;
    // RoPE tables exactly as candle-transformers' llama builds them.
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0 / (shape.rope_theta as f32).powf(i as f32 / head_dim as f32))
        .collect();
    let inv = Tensor::new(inv, dev)?;
    let t =
        Tensor::arange(0, shape.context as u32, dev)?.to_dtype(DType::F32)?.reshape((shape.context, 1))?;
    let freqs = t.matmul(&inv.reshape((1, head_dim / 2))?)?;
    Ok((Model { embed, layers, norm, head, cos: freqs.cos()?, sin: freqs.sin()? }, vars))
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)
}

fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

fn linear(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_matmul(&w.t()?)
}

impl Model {
    /// Logits `(batch, seq, vocab)`.
    fn forward(&self, ids: &Tensor, shape: &Shape, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let hd = shape.hidden / shape.heads;
        let cos = self.cos.narrow(0, 0, t)?;
        let sin = self.sin.narrow(0, 0, t)?;
        let mut x = self.embed.index_select(&ids.flatten_all()?, 0)?.reshape((b, t, shape.hidden))?;
        for l in &self.layers {
            let h = rms_norm(&x, &l.norm1, shape.eps)?;
            let q = linear(&h, &l.q)?.reshape((b, t, shape.heads, hd))?.transpose(1, 2)?.contiguous()?;
            let k = linear(&h, &l.k)?.reshape((b, t, shape.kv_heads, hd))?.transpose(1, 2)?.contiguous()?;
            let v = linear(&h, &l.v)?.reshape((b, t, shape.kv_heads, hd))?.transpose(1, 2)?.contiguous()?;
            let q = candle_nn::rotary_emb::rope_slow(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope_slow(&k, &cos, &sin)?;
            let rep = shape.heads / shape.kv_heads;
            let k = candle_transformers::utils::repeat_kv(k, rep)?.contiguous()?;
            let v = candle_transformers::utils::repeat_kv(v, rep)?.contiguous()?;
            let att = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(mask)?;
            let att = softmax(&att)?;
            let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, shape.hidden))?;
            x = (x + linear(&y, &l.o)?)?;
            let h = rms_norm(&x, &l.norm2, shape.eps)?;
            let m = (linear(&h, &l.gate)?.silu()? * linear(&h, &l.up)?)?;
            x = (x + linear(&m, &l.down)?)?;
        }
        let x = rms_norm(&x, &self.norm, shape.eps)?;
        linear(&x, &self.head)
    }
}

/// Which length class a sequence falls in. A step's examples are split by class and each class
/// is padded on its own, so short arithmetic is not padded to the length of a function body.
fn bucket(len: usize) -> usize {
    match len {
        0..=16 => 0,
        17..=32 => 1,
        33..=64 => 2,
        _ => 3,
    }
}

/// One length class of a step: ids `(B, T)`, next-token targets and a loss mask on answer tokens.
struct Part {
    ids: Tensor,
    targets: Tensor,
    mask: Tensor,
}

/// A step's examples, drawn from the curriculum in its proportions (every step sees every kind
/// of task, as one padded batch would) and split into length classes.
fn batch(
    tok: &Tokenizer,
    rng: &mut Rng,
    size: usize,
    context: usize,
    dev: &Device,
) -> anyhow::Result<Vec<Part>> {
    let mut classes: [Vec<(Vec<u32>, usize)>; 4] = Default::default();
    for _ in 0..size {
        let e = curriculum::sample(rng);
        let p = tok.encode(e.prompt.as_str(), false).map_err(anyhow::Error::msg)?.get_ids().to_vec();
        let a = tok.encode(e.answer.as_str(), false).map_err(anyhow::Error::msg)?.get_ids().to_vec();
        let end = tok.token_to_id(e.end).context("end token")?;
        let mut ids = p.clone();
        ids.extend(&a);
        ids.push(end);
        anyhow::ensure!(ids.len() <= context, "an example of {} tokens exceeds the context", ids.len());
        classes[bucket(ids.len())].push((ids, p.len()));
    }
    let mut parts = Vec::new();
    for rows in classes.iter().filter(|rows| !rows.is_empty()) {
        let t = rows.iter().map(|(ids, _)| ids.len() - 1).max().unwrap_or(1);
        let (mut inp, mut tgt, mut msk) = (Vec::new(), Vec::new(), Vec::new());
        for (ids, plen) in rows {
            for i in 0..t {
                inp.push(*ids.get(i).unwrap_or(&0));
                tgt.push(*ids.get(i + 1).unwrap_or(&0));
                // Position i predicts token i+1; learn the answer and the end token only.
                msk.push(if i + 1 >= *plen && i + 1 < ids.len() { 1f32 } else { 0f32 });
            }
        }
        parts.push(Part {
            ids: Tensor::from_vec(inp, (rows.len(), t), dev)?,
            targets: Tensor::from_vec(tgt, (rows.len(), t), dev)?,
            mask: Tensor::from_vec(msk, (rows.len(), t), dev)?,
        });
    }
    Ok(parts)
}

fn causal_mask(t: usize, dev: &Device) -> candle_core::Result<Tensor> {
    let m: Vec<f32> =
        (0..t).flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(m, (t, t), dev)
}

/// Trains and returns the weights under Hugging Face llama names.
pub fn train(
    tokenizer_dir: &Path,
    shape: Shape,
    sched: Schedule,
) -> anyhow::Result<(HashMap<String, Tensor>, f32, f64)> {
    let dev = Device::Cpu;
    let tok = Tokenizer::from_file(tokenizer_dir.join("tokenizer.json")).map_err(anyhow::Error::msg)?;
    let (model, vars) = init(&shape, sched.seed, &dev)?;
    let params = ParamsAdamW {
        lr: sched.peak_lr,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-8,
        weight_decay: sched.weight_decay,
    };
    let mut opt = AdamW::new(vars.iter().map(|(_, v)| v.clone()).collect(), params)?;
    let mut rng = Rng::new(sched.seed);
    let started = Instant::now();
    let mut ema = None::<f32>;
    let mut last = 0f32;
    let bar = progress::bar(sched.steps as u64, "training qa-tiny");
    for step in 1..=sched.steps {
        let lr = if step <= sched.warmup {
            sched.peak_lr * step as f64 / sched.warmup as f64
        } else {
            let p = (step - sched.warmup) as f64 / (sched.steps - sched.warmup).max(1) as f64;
            sched.peak_lr * (0.05 + 0.95 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
        };
        opt.set_learning_rate(lr);
        // The mean loss over every answer token of the step, whatever class it is in.
        let mut total = None::<Tensor>;
        let mut count = 0f32;
        for part in batch(&tok, &mut rng, sched.batch, shape.context, &dev)? {
            let t = part.ids.dim(1)?;
            let logits = model.forward(&part.ids, &shape, &causal_mask(t, &dev)?)?;
            let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
            let picked = logp.gather(&part.targets.unsqueeze(2)?, 2)?.squeeze(2)?;
            count += part.mask.sum_all()?.to_scalar::<f32>()?;
            let sum = (picked * &part.mask)?.sum_all()?;
            total = Some(match total {
                Some(s) => (s + sum)?,
                None => sum,
            });
        }
        let total = total.context("a step drew no examples")?;
        let loss = (total / (-(count.max(1.0) as f64)))?;
        let mut grads = loss.backward()?;
        // Clip to a global norm of 1.
        let mut norm2 = 0f32;
        for (_, v) in &vars {
            if let Some(g) = grads.get(v.as_tensor()) {
                norm2 += g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            }
        }
        let norm = norm2.sqrt();
        if norm > 1.0 {
            for (_, v) in &vars {
                if let Some(g) = grads.remove(v.as_tensor()) {
                    grads.insert(v.as_tensor(), (g / norm as f64)?);
                }
            }
        }
        opt.step(&grads)?;
        last = loss.to_scalar::<f32>()?;
        ema = Some(ema.map_or(last, |e| 0.98 * e + 0.02 * last));
        bar.inc(1);
        if !bar.is_hidden() {
            bar.set_message(format!("loss {last:.4} (ema {:.4})", ema.unwrap_or(last)));
        } else if step % 50 == 0 || step == 1 || step == sched.steps {
            // No bar (a log, CI): a line every 50 steps says how training goes.
            let secs = started.elapsed().as_secs_f64();
            let rate = step as f64 / secs;
            let eta = (sched.steps - step) as f64 / rate;
            eprintln!(
                "step {step:>5}/{}  loss {last:.4} (ema {:.4})  lr {lr:.2e}  {rate:.2} steps/s  eta {:.0} min",
                sched.steps,
                ema.unwrap_or(last),
                eta / 60.0
            );
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let weights = vars.into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
    Ok((weights, last, secs))
}
