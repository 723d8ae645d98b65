//! `cargo xtask bench gates`: what the logit gate (`diff::logits-vs-safetensors`) claims against
//! what it does, per cell of a model family's fixtures.
//!
//! For each model and each derived format, the reference (safetensors) and the format's next-token
//! distributions are read once over a pool of prompts in the model's own style. Then, on prompt
//! sets drawn from the pool (without replacement, the size of a tier's prompt set):
//!
//! - **false alarms**: the clean format is judged on `--reruns` sets; every failure is a false
//!   alarm;
//! - **top-1 detection**: on `--resamples` sets, the format's top-1 is flipped at decisive
//!   positions with the probability that brings its true agreement down to the rate the gate says
//!   it detects (with power 1 − β) on that set; the share of sets whose top-1 part fails is the
//!   measured power;
//! - **KL detection**: Gaussian noise is added to the format's logits, its scale set on the whole
//!   pool so that the mean KL divergence is the size the gate says it detects; the
//!   share of sets whose KL part fails is the measured power.
//!
//! The planted defects go through the same gate code as a trial (`LogitEvidence::measure` and its
//! parts), so the figures are the gate's, not a model of it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use modelqa::support::checks::diff::{LogitEvidence, LogitTolerance};
use modelqa::support::engine::{Session, load_candle};
use modelqa::support::matrix::{Backend, Format, Quantization};
use modelqa::support::progress;
use modelqa::support::stats::{ALPHA, BETA, SplitMix, normal_quantile};

/// Positions compared per prompt, as the trial compares them.
const POSITIONS: usize = 16;

/// `bench gates [--family F] [--pool N] [--set N] [--reruns N] [--resamples N]`.
#[derive(Debug, clap::Args)]
pub struct GatesArgs {
    /// The fixture family whose models are measured (a folder under fixtures/)
    #[arg(long, value_name = "FAMILY", default_value = "qa-tiny")]
    pub family: String,
    /// A model directory (config.json, safetensors, tokenizer.json) to measure instead of the
    /// family, such as a snapshot `cargo xtask fetch` put in the Hugging Face cache; repeatable
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
    /// Prompts read once per cell, from which every prompt set is drawn
    #[arg(long, value_name = "N", default_value_t = 96)]
    pub pool: usize,
    /// Prompts in one set (qa-tiny's mvp tier compares about 20)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub set: usize,
    /// Clean prompt sets judged per cell (each failure is a false alarm)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub reruns: usize,
    /// Prompt sets per planted defect (the detection rate's denominator)
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub resamples: usize,
    /// Formats to measure (default: APR and every GGUF type)
    #[arg(long, value_name = "FORMAT", value_delimiter = ',', value_parser = parse_format)]
    pub formats: Vec<Format>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    Format::parse(s).ok_or_else(|| format!("unknown format {s:?} (apr, safetensors, gguf-q4_k_m, …)"))
}

/// One cell's figures.
struct Row {
    model: String,
    format: Format,
    false_alarms: usize,
    reruns: usize,
    top1_claim: Option<f64>,
    top1_caught: usize,
    top1_sets: usize,
    kl_claim: f64,
    kl_caught: usize,
    resamples: usize,
    decisive: f64,
}

pub fn run(args: &GatesArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.set >= 2 && args.pool >= args.set,
        "--pool must be at least --set, and --set at least 2"
    );
    let root = crate::root();
    let models = if args.models.is_empty() {
        let family = root.join("fixtures").join(&args.family);
        let mut models: Vec<PathBuf> = std::fs::read_dir(&family)
            .with_context(|| format!("reading {}", family.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("config.json").is_file())
            .collect();
        models.sort();
        anyhow::ensure!(
            !models.is_empty(),
            "no model (a folder with config.json) under {}",
            family.display()
        );
        models
    } else {
        for m in &args.models {
            anyhow::ensure!(
                m.join("config.json").is_file(),
                "{} is not a model directory: it has no config.json",
                m.display()
            );
        }
        args.models.clone()
    };
    let formats = if args.formats.is_empty() {
        std::iter::once(Format::Apr).chain(Quantization::ALL.into_iter().map(Format::Gguf)).collect()
    } else {
        args.formats.clone()
    };
    let cache = root.join("target").join("bench").join("gates-cache");
    let prompts = prompt_pool(args.pool);
    let started = Instant::now();
    let bar = progress::bar((models.len() * formats.len()) as u64, "bench gates");
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for model in &models {
        let name = model.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        bar.set_message(format!("{name}: the reference"));
        let reference = read_logits(model, &prompts)?;
        for &format in &formats {
            bar.set_message(format!("{name} {format}"));
            let artifact =
                match bar.suspend(|| modelqa::support::format::convert::artifact(model, format, &cache)) {
                    Ok(a) => a,
                    Err(e) => {
                        // A type the converter cannot make yet has no cell to measure; said below.
                        skipped.push(format!("{name} {format}: {e}"));
                        bar.inc(1);
                        continue;
                    }
                };
            let candidate = read_logits(&artifact, &prompts)?;
            rows.push(measure(&name, format, &reference, &candidate, args)?);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    print_table(&rows, args, started.elapsed());
    for s in &skipped {
        println!("not measured: {s}");
    }
    Ok(())
}

/// The format's next-token distributions at the first [`POSITIONS`] positions of every prompt.
fn read_logits(path: &Path, prompts: &[String]) -> anyhow::Result<Vec<Vec<Vec<f32>>>> {
    let mut session =
        load_candle(path, Backend::Cpu).with_context(|| format!("loading {}", path.display()))?;
    prompts
        .iter()
        .map(|p| {
            session.prompt_logits(p, POSITIONS).with_context(|| format!("{}: prompt {p:?}", path.display()))
        })
        .collect()
}

/// Prompts in the style a family's playbook asks: questions, sums, products, differences,
/// repetitions and function heads, with seeded operands (the same pool on every run).
fn prompt_pool(n: usize) -> Vec<String> {
    const WORDS: [&str; 12] =
        ["cat", "moon", "river", "blue", "stone", "tree", "light", "bird", "sun", "red", "cold", "fox"];
    let mut rng = SplitMix::new(0x6761_7465_7321);
    (0..n)
        .map(|i| {
            let (a, b) = (rng.below(100), rng.below(100));
            let (w1, w2) = (WORDS[rng.below(WORDS.len())], WORDS[rng.below(WORDS.len())]);
            match i % 7 {
                0 => format!("What is {a} + {b}?\n"),
                1 => format!("Calculate {}*{}\n", a % 10, b % 10),
                2 => format!("{} - {} =\n", a.max(b), a.min(b)),
                3 => format!("Repeat: {w1} {w2}\n"),
                4 => format!("What is {} * {}?\n", a % 10, b % 10),
                5 => format!("def {w1}_{w2}(n):\n"),
                _ => format!("fn {w1}(a: i32, b: i32) -> i32 {{\n"),
            }
        })
        .collect()
}

/// A prompt set: `size` distinct prompts of the pool.
fn draw_set(rng: &mut SplitMix, pool: usize, size: usize) -> Vec<usize> {
    let mut all: Vec<usize> = (0..pool).collect();
    for i in 0..size {
        let j = i + rng.below(pool - i);
        all.swap(i, j);
    }
    all.truncate(size);
    all
}

fn pick<T: Clone>(all: &[T], set: &[usize]) -> Vec<T> {
    set.iter().map(|&i| all[i].clone()).collect()
}

fn measure(
    model: &str,
    format: Format,
    reference: &[Vec<Vec<f32>>],
    candidate: &[Vec<Vec<f32>>],
    args: &GatesArgs,
) -> anyhow::Result<Row> {
    let tolerance = LogitTolerance::for_format(format);
    let evidence = |r: &[Vec<Vec<f32>>], c: &[Vec<Vec<f32>>]| {
        LogitEvidence::measure(r, c).map_err(|e| anyhow::anyhow!("{model} {format}: {e}"))
    };
    let mut rng = SplitMix::new(0x0062_656e_6368 ^ format.to_string().len() as u64);

    // False alarms: clean sets.
    let mut false_alarms = 0;
    for _ in 0..args.reruns {
        let set = draw_set(&mut rng, reference.len(), args.set);
        let e = evidence(&pick(reference, &set), &pick(candidate, &set))?;
        if e.top1_fails(tolerance) || e.kl_fails(tolerance) {
            false_alarms += 1;
        }
    }

    // Top-1: flip decisive positions so the true agreement is the rate the gate claims to detect.
    let (mut top1_caught, mut top1_claims, mut decisive_sum) = (0, Vec::new(), 0usize);
    // Sets too small for any count to fail make no claim and are left out of the rate.
    for _ in 0..args.resamples {
        let set = draw_set(&mut rng, reference.len(), args.set);
        let (r, mut c) = (pick(reference, &set), pick(candidate, &set));
        let clean = evidence(&r, &c)?;
        let (agree, decisive) = clean.decisive_agreement();
        decisive_sum += decisive;
        let Some(claim) = clean.top1_gate(tolerance).detects_at_or_below else { continue };
        top1_claims.push(claim);
        let now = agree as f64 / decisive.max(1) as f64;
        let flip = if now > claim { 1.0 - claim / now } else { 0.0 };
        let tie = clean.tie_margin();
        for (rp, cp) in r.iter().zip(c.iter_mut()) {
            for (rl, cl) in rp.iter().zip(cp.iter_mut()) {
                let best = argmax(rl);
                if margin(rl) > tie && argmax(cl) == best && rng.unit() < flip {
                    // The format now prefers the reference's runner-up, by the reference's margin.
                    let second = runner_up(rl, best);
                    cl.swap(best, second);
                }
            }
        }
        if evidence(&r, &c)?.top1_fails(tolerance) {
            top1_caught += 1;
        }
    }

    // KL: noise on the whole pool at the size the gate claims to detect on a set.
    let kl_claim = {
        let per_prompt = |scale: f64| -> Vec<f64> { noisy_kl(reference, candidate, scale, 0x6b6c) };
        let z = normal_quantile(1.0 - ALPHA) + normal_quantile(1.0 - BETA);
        let gap = |scale: f64| {
            let kl = per_prompt(scale);
            let mean = kl.iter().sum::<f64>() / kl.len() as f64;
            let sd = (kl.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (kl.len() - 1) as f64).sqrt();
            // The gate's claim on a set of this size: threshold + z·se (sampling without
            // replacement from a finite pool narrows se by the finite-population factor).
            let fpc = ((kl.len() - args.set) as f64 / (kl.len() - 1) as f64).sqrt();
            (mean, mean - (tolerance.max_mean_kl + z * sd / (args.set as f64).sqrt() * fpc))
        };
        let (mut lo, mut hi) = (0.0, 0.05);
        while gap(hi).1 < 0.0 && hi < 100.0 {
            hi *= 2.0;
        }
        for _ in 0..40 {
            let mid = (lo + hi) / 2.0;
            if gap(mid).1 < 0.0 { lo = mid } else { hi = mid }
        }
        (hi, gap(hi).0)
    };
    let (scale, kl_target) = kl_claim;
    let noisy = add_noise(candidate, scale, 0x6b6c);
    let mut kl_caught = 0;
    for _ in 0..args.resamples {
        let set = draw_set(&mut rng, reference.len(), args.set);
        if evidence(&pick(reference, &set), &pick(&noisy, &set))?.kl_fails(tolerance) {
            kl_caught += 1;
        }
    }
    let top1_claim =
        (!top1_claims.is_empty()).then(|| top1_claims.iter().sum::<f64>() / top1_claims.len() as f64);
    Ok(Row {
        model: model.to_string(),
        format,
        false_alarms,
        reruns: args.reruns,
        top1_claim,
        top1_caught,
        top1_sets: top1_claims.len(),
        kl_claim: kl_target,
        kl_caught,
        resamples: args.resamples,
        decisive: decisive_sum as f64 / args.resamples.max(1) as f64,
    })
}

/// `candidate` with seeded Gaussian noise of standard deviation `scale` on every logit.
fn add_noise(candidate: &[Vec<Vec<f32>>], scale: f64, seed: u64) -> Vec<Vec<Vec<f32>>> {
    let mut rng = SplitMix::new(seed);
    candidate
        .iter()
        .map(|p| p.iter().map(|l| l.iter().map(|&v| v + (rng.normal() * scale) as f32).collect()).collect())
        .collect()
}

/// Each prompt's mean KL divergence from the reference once `candidate` carries the noise.
fn noisy_kl(reference: &[Vec<Vec<f32>>], candidate: &[Vec<Vec<f32>>], scale: f64, seed: u64) -> Vec<f64> {
    let noisy = add_noise(candidate, scale, seed);
    reference
        .iter()
        .zip(&noisy)
        .map(|(r, c)| {
            r.iter().zip(c).map(|(a, b)| modelqa::support::checks::diff::kl_divergence(a, b)).sum::<f64>()
                / r.len().max(1) as f64
        })
        .collect()
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

fn runner_up(v: &[f32], best: usize) -> usize {
    v.iter()
        .enumerate()
        .filter(|(i, _)| *i != best)
        .fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
        .0
}

fn margin(v: &[f32]) -> f64 {
    let best = argmax(v);
    f64::from(v[best] - v[runner_up(v, best)])
}

fn print_table(rows: &[Row], args: &GatesArgs, took: Duration) {
    println!();
    println!(
        "gate benchmark: diff::logits-vs-safetensors on {}; {} prompts read per cell, sets of {} drawn without \
         replacement; {} clean sets and {} sets per planted defect; {} cpus, {}; {:.0} s",
        if args.models.is_empty() {
            format!("fixtures/{}", args.family)
        } else {
            format!("{} model directories", args.models.len())
        },
        args.pool,
        args.set,
        args.reruns,
        args.resamples,
        std::thread::available_parallelism().map_or(1, |c| c.get()),
        std::env::consts::ARCH,
        took.as_secs_f64()
    );
    println!();
    println!(
        "| model | format | false alarms | decisive positions (mean) | top-1: detects ≤ (mean claim) | caught | KL: detects ≥ | caught |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let pct = |k: usize, n: usize| format!("{:.1}%", k as f64 / n.max(1) as f64 * 100.0);
    for r in rows {
        println!(
            "| {} | {} | {} of {} | {:.0} | {} | {} of {} | {:.2e} | {} |",
            r.model,
            r.format,
            r.false_alarms,
            r.reruns,
            r.decisive,
            r.top1_claim.map_or("–".to_string(), |c| format!("{:.1}%", c * 100.0)),
            pct(r.top1_caught, r.top1_sets),
            r.top1_sets,
            r.kl_claim,
            pct(r.kl_caught, r.resamples),
        );
    }
    let alarms: usize = rows.iter().map(|r| r.false_alarms).sum();
    let min = |f: fn(&Row) -> (usize, usize)| {
        rows.iter().map(f).map(|(k, n)| k as f64 / n.max(1) as f64).fold(1.0, f64::min)
    };
    println!();
    println!(
        "false alarms: {alarms} of {} clean sets; lowest detection: top-1 {:.1}%, KL {:.1}%",
        rows.iter().map(|r| r.reruns).sum::<usize>(),
        min(|r| (r.top1_caught, r.top1_sets)) * 100.0,
        min(|r| (r.kl_caught, r.resamples)) * 100.0
    );
}
