//! A candidate's trace against the ground truth's, site by site in the order the forward pass
//! reaches them: the cosine similarity of the activations and the ratio of their L2 norms, the
//! worst over the prompts. The first site past its bound is where the model broke; everything
//! after it inherits the damage, so it alone is named.

use crate::matrix::{Format, Quantization};

use super::forward::{Site, Trace};

/// The bounds of one format: every site's cosine at least `min_cosine`, its norm within a
/// factor `max_norm_ratio` of the ground truth's either way. Defaults measured on clean runs
/// (docs/playbooks.md, "diff::trace").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceBound {
    pub min_cosine: f64,
    pub max_norm_ratio: f64,
}

impl TraceBound {
    pub fn for_format(format: Format) -> TraceBound {
        let (min_cosine, max_norm_ratio) = match format {
            Format::Safetensors | Format::Apr => (0.9999, 1.001),
            Format::Gguf(q) => match q {
                Quantization::F32 | Quantization::F16 => (0.9999, 1.002),
                Quantization::Q8_0 => (0.998, 1.015),
                Quantization::Q6K => (0.997, 1.025),
                // qa-tiny's deep tier: Q5_0 cosine 0.9732 (layer 1 MLP), Q5_K_M norm 0.9612×.
                Quantization::Q5KM | Quantization::Q5_0 => (0.95, 1.08),
                _ => (0.90, 1.15),
            },
        };
        TraceBound { min_cosine, max_norm_ratio }
    }
}

/// One site compared over every prompt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SiteComparison {
    pub(crate) site: Site,
    /// The lowest cosine over the prompts.
    pub(crate) cosine: f64,
    /// The candidate's L2 norm over the ground truth's, the furthest from 1 over the prompts.
    pub(crate) norm_ratio: f64,
    /// Both norms, summed over the prompts.
    pub(crate) reference_l2: f64,
    pub(crate) candidate_l2: f64,
}

impl SiteComparison {
    /// Why this site is past `bound`, if it is.
    pub(crate) fn breach(&self, bound: TraceBound) -> Option<String> {
        if self.cosine.is_nan() || self.cosine < bound.min_cosine {
            return Some(format!("{}: cosine {:.4} (bound {})", self.site, self.cosine, bound.min_cosine));
        }
        let r = self.norm_ratio;
        if !(r <= bound.max_norm_ratio && r >= 1.0 / bound.max_norm_ratio) {
            return Some(format!(
                "{}: norm {:.4}× the ground truth's (bound {}× either way; cosine {:.4})",
                self.site, r, bound.max_norm_ratio, self.cosine
            ));
        }
        None
    }
}

fn cosine(a: &[f32], b: &[f32]) -> (f64, f64, f64) {
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64, y as f64);
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    let (na, nb) = (na.sqrt(), nb.sqrt());
    let cos = if na == 0.0 && nb == 0.0 { 1.0 } else { dot / (na * nb) };
    (cos, na, nb)
}

/// Why two traces cannot be compared at all.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Mismatch(pub(crate) String);

/// Every site of `candidate` against `reference`, prompt by prompt.
pub(crate) fn compare(reference: &[Trace], candidate: &[Trace]) -> Result<Vec<SiteComparison>, Mismatch> {
    if reference.len() != candidate.len() {
        return Err(Mismatch(format!("{} prompts traced against {}", candidate.len(), reference.len())));
    }
    let mut out: Vec<SiteComparison> = Vec::new();
    for (p, (r, c)) in reference.iter().zip(candidate).enumerate() {
        if r.tokens != c.tokens {
            return Err(Mismatch(format!(
                "prompt {p} is {} tokens in this format and {} in the ground truth",
                c.tokens, r.tokens
            )));
        }
        if r.sites.len() != c.sites.len() {
            return Err(Mismatch(format!(
                "this format traces {} sites, the ground truth {} (a different layer count)",
                c.sites.len(),
                r.sites.len()
            )));
        }
        for (i, (rs, cs)) in r.sites.iter().zip(&c.sites).enumerate() {
            if rs.values.len() != cs.values.len() {
                return Err(Mismatch(format!(
                    "{} is {} values wide in this format and {} in the ground truth",
                    cs.site,
                    cs.values.len(),
                    rs.values.len()
                )));
            }
            let (cos, nr, nc) = cosine(&rs.values, &cs.values);
            let ratio = if nr > 0.0 {
                nc / nr
            } else if nc > 0.0 {
                f64::INFINITY
            } else {
                1.0
            };
            if p == 0 {
                out.push(SiteComparison {
                    site: rs.site,
                    cosine: cos,
                    norm_ratio: ratio,
                    reference_l2: nr,
                    candidate_l2: nc,
                });
                continue;
            }
            let s = &mut out[i];
            // NaN is the worst cosine.
            if cos.is_nan() || cos < s.cosine {
                s.cosine = cos;
            }
            if ratio.is_nan() || ratio.ln().abs() > s.norm_ratio.ln().abs() {
                s.norm_ratio = ratio;
            }
            s.reference_l2 += nr;
            s.candidate_l2 += nc;
        }
    }
    Ok(out)
}

/// The first site past `bound`, in the forward pass's order, with why.
pub(crate) fn first_breach(sites: &[SiteComparison], bound: TraceBound) -> Option<String> {
    sites.iter().find_map(|s| s.breach(bound))
}

#[cfg(test)]
mod tests {
    use super::super::forward::{SiteTrace, Stats};
    use super::*;

    fn trace(sites: &[(Site, Vec<f32>)]) -> Trace {
        Trace {
            tokens: 1,
            sites: sites
                .iter()
                .map(|(s, v)| SiteTrace { site: *s, values: v.clone(), stats: Stats::of(v) })
                .collect(),
            norms: Vec::new(),
            attention: Vec::new(),
        }
    }

    #[test]
    fn the_first_site_past_its_bound_is_named_not_the_worst() {
        let truth = trace(&[
            (Site::Embedding, vec![1.0, 2.0]),
            (Site::Attention(0), vec![1.0, 0.0]),
            (Site::Mlp(0), vec![0.0, 1.0]),
        ]);
        let broken = trace(&[
            (Site::Embedding, vec![1.0, 2.0]),
            (Site::Attention(0), vec![1.0, 0.9]),
            (Site::Mlp(0), vec![1.0, 0.0]),
        ]);
        let sites = compare(std::slice::from_ref(&truth), &[broken]).expect("comparable");
        let bound = TraceBound { min_cosine: 0.99, max_norm_ratio: 1.01 };
        let why = first_breach(&sites, bound).expect("a breach");
        assert!(why.starts_with("layer 0 attention output: cosine 0.7433"), "{why}");
        let scaled = trace(&[
            (Site::Embedding, vec![1.0, 2.0]),
            (Site::Attention(0), vec![1.05, 0.0]),
            (Site::Mlp(0), vec![0.0, 1.0]),
        ]);
        let sites = compare(std::slice::from_ref(&truth), &[scaled]).expect("comparable");
        let why = first_breach(&sites, bound).expect("a breach");
        assert!(why.starts_with("layer 0 attention output: norm 1.0500×"), "{why}");
        let nan = trace(&[
            (Site::Embedding, vec![f32::NAN, 2.0]),
            (Site::Attention(0), vec![1.0, 0.0]),
            (Site::Mlp(0), vec![0.0, 1.0]),
        ]);
        let sites = compare(&[truth], &[nan]).expect("comparable");
        assert!(first_breach(&sites, bound).expect("a breach").starts_with("embedding: cosine NaN"));
    }
}
