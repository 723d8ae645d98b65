//! Expansion (pass 2): playbooks → the sorted, named trials they define. Pure and deterministic:
//! no I/O, no models. The command-line filter is applied here, while names are generated, so a
//! run that selects 1% of 1.8 million trials allocates only that 1%.

use std::sync::Arc;

use memchr::memmem;

use crate::matrix::{Backend, Format, Modality};
use crate::name::{SEP, Tail, TrialName};
use crate::playbook::{Model, Playbook, Scenario, TierPlan};
use crate::vocab::{Category, Gate, Invariant, SecurityCheck, ServerCheck};

/// One trial's coordinates in a [`Plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialRef {
    group: u32,
    cell: u32,
    tail: u32,
}

/// A `(family, tier, model)`: the unit that shares a prefix, a tier plan and a scenario list.
#[derive(Debug)]
struct Group {
    playbook: usize,
    tier: usize,
    model: usize,
    /// `family::tier::model::`
    prefix: String,
}

/// What the last two segments of a name stand for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TailKind {
    Scenario {
        modality: Modality,
        index: usize,
    },
    Gate(Gate),
    /// A server-level check; tiers with the `serve` modality only.
    ServerGate(ServerCheck),
    /// What hostile input cannot do; every cell.
    Security(SecurityCheck),
    /// Regression against golden references; safetensors cells only.
    Golden(GoldenKind),
    /// A derived format against the safetensors ground truth (derived cells only), or the cell's
    /// server against the cell in process (every cell of a tier that serves).
    Differential(DiffKind),
    /// The playbook's performance assertions; cells whose backend has one.
    Perf,
    /// The numerics of the cell's traced forward pass (`gate::trace`); every cell.
    Numerics,
    /// The model's kernel class and its certified representative (`gate::kernel-class`); the
    /// `dim-smoke` tier only.
    KernelClass,
}

/// The cells and tails of one `(playbook, tier)`, in name order.
#[derive(Debug)]
struct Layout {
    /// The tier's scenarios, shared by every trial spec of the layout.
    scenarios: Arc<[Arc<Scenario>]>,
    /// `(format, backend)` with their `format::backend::` text.
    cells: Vec<(Format, Backend, String)>,
    /// `modality::scenario` or `gate::gN-…`, with what it stands for.
    tails: Vec<(TailKind, String)>,
    /// The backends the playbook asserts performance on.
    perf_backends: Vec<Backend>,
}

impl Layout {
    /// Whether a tail has a trial in the cell `(format, backend)`.
    fn applies(&self, kind: TailKind, format: Format, backend: Backend) -> bool {
        match kind {
            TailKind::Perf => self.perf_backends.contains(&backend),
            TailKind::Differential(DiffKind::BackendParity) => backend == Backend::Gpu,
            _ => applies(kind, format),
        }
    }
}

/// Which trials to build, as libtest reads its arguments.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub filter: Option<String>,
    pub exact: bool,
    pub skip: Vec<String>,
}

impl Filter {
    fn finder(&self) -> Option<memmem::Finder<'_>> {
        match &self.filter {
            Some(f) if !self.exact && !f.is_empty() => Some(memmem::Finder::new(f.as_bytes())),
            _ => None,
        }
    }

    /// Whether a full name passes the filter and the skips.
    pub fn matches(&self, name: &str) -> bool {
        let selected = match &self.filter {
            None => true,
            Some(f) if self.exact => name == f,
            Some(f) => name.contains(f.as_str()),
        };
        selected && !self.skip.iter().any(|s| if self.exact { name == s } else { name.contains(s.as_str()) })
    }
}

/// All trials of a set of playbooks, addressable without being materialised.
#[derive(Debug)]
pub struct Plan {
    playbooks: Vec<Playbook>,
    groups: Vec<Group>,
    /// Indexed by playbook, then tier.
    layouts: Vec<Vec<Layout>>,
}

/// What a golden-reference trial compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoldenKind {
    /// Greedy output text of every scenario.
    Text,
    /// Top-k logits at the first prompt positions of every scenario.
    Logits,
}

impl GoldenKind {
    pub fn slug(self) -> &'static str {
        match self {
            GoldenKind::Text => "golden-text",
            GoldenKind::Logits => "golden-logits",
        }
    }
}

/// What a differential trial compares: a derived format with the safetensors ground truth, or
/// (`ServeVsRun`) the cell's served answers with its answers in process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffKind {
    /// Name bijection, shapes, dtypes, values within the dtype's bound, transposition.
    Tensors,
    /// Next-token distributions on the scenario prompts: mean KL divergence and top-1 agreement.
    Logits,
    /// The chat template renders every conversation to the same text as the ground truth's.
    ChatPrompt,
    /// Greedy outputs: where they part, each format's token is in the other's top k.
    Generation,
    /// One of the contract invariants I-1 to I-5.
    Invariant(Invariant),
    /// Thousands of generated strings through the format's tokenizer and the ground truth's.
    TokenizerFuzz,
    /// Each scenario's answer over HTTP, one request at a time and eight at once, against the
    /// same cell's answer in process: token for token, or each side's token in the other's top 5
    /// where they part. Every cell of a tier with the `serve` modality.
    ServeVsRun,
    /// Next-token distributions along one sequence as long as the context, judged per bucket
    /// of positions: what only long positions show (a wrong rope θ).
    LongContext,
    /// Perplexity on a held-out text, as a ratio to the ground truth's.
    Perplexity,
    /// A GPU cell's logits against the same format's on CPU (GPU cells only).
    BackendParity,
    /// A traced forward pass against the ground truth's, layer by layer: the first site whose
    /// cosine or norm leaves its bound is named.
    Trace,
    /// Each scenario prompt alone and inside batches of 2, 8 and 32: the same logit bits on the
    /// embedded engine, the same answers (or top-5 agreement) over an OpenAI-compatible API.
    /// Every cell.
    BatchInvariance,
}

impl DiffKind {
    /// Whether the trial runs the safetensors ground truth's session beside the cell's and
    /// compares their logits (so an engine that shows none cannot run it).
    pub fn compares_logits(self) -> bool {
        matches!(
            self,
            DiffKind::Logits
                | DiffKind::Generation
                | DiffKind::LongContext
                | DiffKind::Perplexity
                | DiffKind::BackendParity
        )
    }

    pub fn slug(self) -> &'static str {
        match self {
            DiffKind::Tensors => "tensors-vs-safetensors",
            DiffKind::Logits => "logits-vs-safetensors",
            DiffKind::ChatPrompt => "chat-prompt-vs-safetensors",
            DiffKind::Generation => "generation-vs-safetensors",
            DiffKind::Invariant(i) => i.slug(),
            DiffKind::TokenizerFuzz => "tokenizer-fuzz",
            DiffKind::ServeVsRun => "serve-vs-run",
            DiffKind::LongContext => "long-context",
            DiffKind::Perplexity => "perplexity",
            DiffKind::BackendParity => "backend-parity",
            DiffKind::Trace => "trace",
            DiffKind::BatchInvariance => "batch-invariance",
        }
    }
}

/// What a trial does.
#[derive(Debug, Clone)]
pub enum TrialKind {
    /// A scenario in a modality, judged by its oracles.
    Scenario { modality: Modality, scenario: Arc<Scenario> },
    /// A gateway check of the group.
    Gate(Gate),
    /// A check of the group's server.
    ServerGate(ServerCheck),
    /// A check of what hostile input cannot do to the cell.
    Security(SecurityCheck),
    /// A comparison with the model's golden references.
    Golden(GoldenKind),
    /// A comparison of a derived format with the safetensors ground truth.
    Differential(DiffKind),
    /// The playbook's performance assertions on the cell.
    Perf,
    /// The numerics of the cell's traced forward pass.
    Numerics,
    /// A sibling checked by its kernel class's certified representative (`dim-smoke`).
    KernelClass,
}

impl TrialKind {
    /// The MQS category a trial scores in: gateways G2 and G4 judge answers (QUAL), the other
    /// gateways the files, loading and stability (STAB); golden references are REGR; a derived
    /// format against the ground truth, and a cell served against itself in process, are COMP.
    pub fn category(&self) -> Category {
        match self {
            TrialKind::Gate(Gate::Inference | Gate::Quality) => Category::Qual,
            TrialKind::Gate(Gate::Integrity | Gate::Load | Gate::Stability) => Category::Stab,
            TrialKind::ServerGate(_)
            | TrialKind::Security(_)
            | TrialKind::Numerics
            | TrialKind::KernelClass => Category::Stab,
            TrialKind::Perf => Category::Perf,
            TrialKind::Golden(_) => Category::Regr,
            TrialKind::Differential(_) => Category::Comp,
            TrialKind::Scenario { scenario, .. } if scenario.edge_case => Category::Edge,
            TrialKind::Scenario { .. } => Category::Qual,
        }
    }
}

/// A selected trial with everything its body needs.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    pub name: TrialName,
    pub full_name: String,
    pub model: Model,
    pub tier: TierPlan,
    pub kind: TrialKind,
    /// The scenarios of the tier, for gates that look at all of them.
    pub scenarios: Arc<[Arc<Scenario>]>,
    pub playbook: usize,
    pub source: std::path::PathBuf,
    /// The engine under test.
    pub engine: crate::playbook::spec::EngineSpec,
    /// The playbook's differential settings.
    pub differential: crate::playbook::spec::DifferentialSpec,
    /// The playbook's performance assertions.
    pub performance: Option<crate::playbook::spec::PerformanceSpec>,
}

impl TrialKind {
    /// Whether the trial loads a session; the others read files only (G0, the invariants of a
    /// derived file, the tokenizer fuzz, the kernel class).
    pub fn loads_session(&self) -> bool {
        !matches!(
            self,
            TrialKind::Gate(Gate::Integrity)
                | TrialKind::Differential(DiffKind::Invariant(_) | DiffKind::TokenizerFuzz)
                | TrialKind::KernelClass
        )
    }
}

impl TrialSpec {
    /// The modality a scenario trial runs in; gates have none.
    pub fn modality(&self) -> Option<Modality> {
        match &self.kind {
            TrialKind::Scenario { modality, .. } => Some(*modality),
            TrialKind::Gate(_)
            | TrialKind::ServerGate(_)
            | TrialKind::Security(_)
            | TrialKind::Golden(_)
            | TrialKind::Differential(_)
            | TrialKind::Numerics
            | TrialKind::KernelClass
            | TrialKind::Perf => None,
        }
    }
}

/// Golden references describe the model as published, so only safetensors cells compare them;
/// differential trials compare a derived format with it, so only derived cells have them — but
/// a cell against itself (its server, its backend parity, its batches), which every cell has.
fn applies(kind: TailKind, format: Format) -> bool {
    match kind {
        TailKind::Golden(_) => format == Format::Safetensors,
        TailKind::Differential(
            DiffKind::ServeVsRun | DiffKind::BackendParity | DiffKind::BatchInvariance,
        ) => true,
        TailKind::Differential(_) => format != Format::Safetensors,
        TailKind::Scenario { .. }
        | TailKind::Gate(_)
        | TailKind::ServerGate(_)
        | TailKind::Security(_)
        | TailKind::Numerics
        | TailKind::KernelClass
        | TailKind::Perf => true,
    }
}

/// The most trials all playbooks together may define: `--list` prints each and a filter scans
/// them all, so past this a typo in a count would cost minutes before any trial ran.
pub(crate) const MAX_TRIALS: usize = 20_000_000;

impl Plan {
    pub fn new(playbooks: Vec<Playbook>) -> Self {
        let mut groups = Vec::new();
        let mut layouts = Vec::new();
        for (p, pb) in playbooks.iter().enumerate() {
            let mut per_tier = Vec::new();
            for (t, tier) in pb.tiers.iter().enumerate() {
                per_tier.push(layout(tier, pb.performance.as_ref()));
                for (m, model) in pb.models.iter().enumerate() {
                    let prefix = format!("{}{SEP}{}{SEP}{}{SEP}", pb.family, tier.name, model.slug);
                    groups.push(Group { playbook: p, tier: t, model: m, prefix });
                }
            }
            layouts.push(per_tier);
        }
        groups.sort_by(|a, b| a.prefix.cmp(&b.prefix));
        name_tails(&playbooks, &mut layouts);
        Self { playbooks, groups, layouts }
    }

    pub fn playbooks(&self) -> &[Playbook] {
        &self.playbooks
    }

    /// How many trials the playbooks define, before any filter.
    pub fn total(&self) -> usize {
        self.groups
            .iter()
            .map(|g| {
                let l = &self.layouts[g.playbook][g.tier];
                l.cells
                    .iter()
                    .map(|(f, b, _)| l.tails.iter().filter(|(k, _)| l.applies(*k, *f, *b)).count())
                    .sum::<usize>()
            })
            .sum()
    }

    /// Calls `f` with every trial that passes `filter`, in name order, and its full name.
    pub fn for_each_selected(&self, filter: &Filter, mut f: impl FnMut(TrialRef, &str)) {
        let finder = filter.finder();
        let mut name = String::with_capacity(160);
        for (g, group) in self.groups.iter().enumerate() {
            let layout = &self.layouts[group.playbook][group.tier];
            for (c, (format, backend, cell)) in layout.cells.iter().enumerate() {
                for (t, (kind, tail)) in layout.tails.iter().enumerate() {
                    if !layout.applies(*kind, *format, *backend) {
                        continue;
                    }
                    name.clear();
                    name.push_str(&group.prefix);
                    name.push_str(cell);
                    name.push_str(tail);
                    let selected = match &finder {
                        Some(fd) => fd.find(name.as_bytes()).is_some(),
                        None => filter.filter.as_ref().is_none_or(|f| !filter.exact || *f == name),
                    };
                    if selected
                        && !filter
                            .skip
                            .iter()
                            .any(|s| if filter.exact { name == *s } else { name.contains(s.as_str()) })
                    {
                        f(TrialRef { group: g as u32, cell: c as u32, tail: t as u32 }, &name);
                    }
                }
            }
        }
    }

    /// The full name of one trial, without building its spec.
    pub fn name(&self, r: TrialRef) -> String {
        let group = &self.groups[r.group as usize];
        let layout = &self.layouts[group.playbook][group.tier];
        format!("{}{}{}", group.prefix, layout.cells[r.cell as usize].2, layout.tails[r.tail as usize].1)
    }

    /// The selected trials, in name order.
    pub fn select(&self, filter: &Filter) -> Vec<TrialRef> {
        let mut out = Vec::new();
        self.for_each_selected(filter, |r, _| out.push(r));
        out
    }

    /// Finds the one trial called `name` without generating the others (nextest's `--exact`).
    pub fn find(&self, name: &TrialName) -> Option<TrialRef> {
        let prefix = format!("{}{SEP}{}{SEP}{}{SEP}", name.family, name.tier, name.model);
        let g = self.groups.binary_search_by(|g| g.prefix.as_str().cmp(&prefix)).ok()?;
        let group = &self.groups[g];
        let layout = &self.layouts[group.playbook][group.tier];
        let c = layout.cells.iter().position(|(f, b, _)| *f == name.format && *b == name.backend)?;
        let tail_text = name.tail.to_string();
        let t = layout.tails.iter().position(|(kind, text)| {
            *text == tail_text && layout.applies(*kind, name.format, name.backend)
        })?;
        Some(TrialRef { group: g as u32, cell: c as u32, tail: t as u32 })
    }

    /// What binding needs of a trial, without building its spec: `(model, format, backend)`.
    pub fn bind_key(&self, r: TrialRef) -> (&Model, Format, Backend) {
        let group = &self.groups[r.group as usize];
        let layout = &self.layouts[group.playbook][group.tier];
        let (format, backend, _) = layout.cells[r.cell as usize];
        (&self.playbooks[group.playbook].models[group.model], format, backend)
    }

    /// Everything about one trial.
    pub fn spec(&self, r: TrialRef) -> TrialSpec {
        let group = &self.groups[r.group as usize];
        let pb = &self.playbooks[group.playbook];
        let tier = &pb.tiers[group.tier];
        let layout = &self.layouts[group.playbook][group.tier];
        let (format, backend, _) = layout.cells[r.cell as usize];
        let (kind, tail) = match layout.tails[r.tail as usize].0 {
            TailKind::Scenario { modality, index } => {
                let scenario = pb.scenarios[index].clone();
                let tail = Tail::Scenario { modality, scenario: scenario.name.clone() };
                (TrialKind::Scenario { modality, scenario }, tail)
            }
            TailKind::Gate(g) => (TrialKind::Gate(g), Tail::Gate(g.slug().to_string())),
            TailKind::ServerGate(c) => (TrialKind::ServerGate(c), Tail::Gate(c.slug().to_string())),
            TailKind::Security(c) => (TrialKind::Security(c), Tail::Gate(c.slug().to_string())),
            TailKind::Golden(k) => (TrialKind::Golden(k), Tail::Diff(k.slug().to_string())),
            TailKind::Differential(k) => (TrialKind::Differential(k), Tail::Diff(k.slug().to_string())),
            TailKind::Perf => (TrialKind::Perf, Tail::Perf(PERF_SLUG.to_string())),
            TailKind::Numerics => (TrialKind::Numerics, Tail::Gate(TRACE_SLUG.to_string())),
            TailKind::KernelClass => (TrialKind::KernelClass, Tail::Gate(KERNEL_CLASS_SLUG.to_string())),
        };
        let model = pb.models[group.model].clone();
        let name = TrialName {
            family: pb.family.clone(),
            tier: tier.name.clone(),
            model: model.slug.clone(),
            format,
            backend,
            tail,
        };
        TrialSpec {
            full_name: name.to_string(),
            name,
            model,
            tier: tier.clone(),
            kind,
            scenarios: Arc::clone(&layout.scenarios),
            playbook: group.playbook,
            source: pb.source.clone(),
            engine: pb.engine.clone(),
            differential: pb.differential.clone(),
            performance: pb.performance.clone(),
        }
    }
}

/// The last segment of the performance trial.
pub(crate) const PERF_SLUG: &str = "decode";

/// The last segment of the numerics gate over a traced forward pass.
pub(crate) const TRACE_SLUG: &str = "trace";

/// The last segment of the kernel-class check of the `dim-smoke` tier.
pub(crate) const KERNEL_CLASS_SLUG: &str = "kernel-class";

fn layout(tier: &TierPlan, performance: Option<&crate::playbook::spec::PerformanceSpec>) -> Layout {
    let mut cells = Vec::new();
    for f in &tier.formats {
        for b in &tier.backends {
            cells.push((*f, *b, format!("{f}{SEP}{b}{SEP}")));
        }
    }
    // Each segment already sorts as its name followed by `::`, but a format name can be a prefix
    // of another's, so sort the joined text.
    cells.sort_by(|a, b| a.2.cmp(&b.2));
    if tier.name == crate::playbook::DIM_SMOKE {
        // A sibling of a qualified model, by its files alone: G0 and its kernel class.
        let tails =
            vec![(TailKind::Gate(Gate::Integrity), String::new()), (TailKind::KernelClass, String::new())];
        return Layout { scenarios: Arc::from(Vec::new()), cells, tails, perf_backends: Vec::new() };
    }
    let mut tails = Vec::new();
    for m in &tier.modalities {
        for index in 0..tier.scenario_count {
            tails.push((TailKind::Scenario { modality: *m, index }, String::new()));
        }
    }
    for g in Gate::ALL {
        tails.push((TailKind::Gate(g), String::new()));
    }
    for c in SecurityCheck::ALL {
        tails.push((TailKind::Security(c), String::new()));
    }
    for k in [GoldenKind::Text, GoldenKind::Logits] {
        tails.push((TailKind::Golden(k), String::new()));
    }
    tails.push((TailKind::Numerics, String::new()));
    for k in [
        DiffKind::Tensors,
        DiffKind::Logits,
        DiffKind::Generation,
        DiffKind::LongContext,
        DiffKind::Perplexity,
        DiffKind::Trace,
    ] {
        tails.push((TailKind::Differential(k), String::new()));
    }
    for i in Invariant::ALL {
        tails.push((TailKind::Differential(DiffKind::Invariant(i)), String::new()));
    }
    tails.push((TailKind::Differential(DiffKind::TokenizerFuzz), String::new()));
    tails.push((TailKind::Differential(DiffKind::BatchInvariance), String::new()));
    if tier.backends.contains(&Backend::Gpu) {
        tails.push((TailKind::Differential(DiffKind::BackendParity), String::new()));
    }
    if tier.modalities.contains(&Modality::Serve) {
        for c in ServerCheck::ALL {
            tails.push((TailKind::ServerGate(c), String::new()));
        }
        tails.push((TailKind::Differential(DiffKind::ServeVsRun), String::new()));
    }
    if tier.modalities.iter().any(|m| matches!(m, Modality::Chat | Modality::Serve)) {
        tails.push((TailKind::Differential(DiffKind::ChatPrompt), String::new()));
    }
    let perf_backends: Vec<Backend> =
        tier.backends.iter().copied().filter(|b| performance.is_some_and(|p| p.asserts_on(*b))).collect();
    if !perf_backends.is_empty() {
        tails.push((TailKind::Perf, String::new()));
    }
    // Named by `name_tails`, which knows the scenarios.
    Layout { scenarios: Arc::from(Vec::new()), cells, tails, perf_backends }
}

/// Fills the tail texts of each layout from its playbook's scenario names.
fn name_tails(playbooks: &[Playbook], layouts: &mut [Vec<Layout>]) {
    for (p, per_tier) in layouts.iter_mut().enumerate() {
        for (t, layout) in per_tier.iter_mut().enumerate() {
            let count = playbooks[p].tiers[t].scenario_count;
            layout.scenarios = playbooks[p].scenarios[..count].iter().cloned().collect();
            for (kind, text) in layout.tails.iter_mut() {
                *text = match kind {
                    TailKind::Scenario { modality, index } => {
                        format!("{modality}{SEP}{}", playbooks[p].scenarios[*index].name)
                    }
                    TailKind::Gate(g) => format!("gate{SEP}{}", g.slug()),
                    TailKind::ServerGate(c) => format!("gate{SEP}{}", c.slug()),
                    TailKind::Security(c) => format!("gate{SEP}{}", c.slug()),
                    TailKind::Golden(k) => format!("diff{SEP}{}", k.slug()),
                    TailKind::Differential(k) => format!("diff{SEP}{}", k.slug()),
                    TailKind::Perf => format!("perf{SEP}{PERF_SLUG}"),
                    TailKind::Numerics => format!("gate{SEP}{TRACE_SLUG}"),
                    TailKind::KernelClass => format!("gate{SEP}{KERNEL_CLASS_SLUG}"),
                };
            }
            // A scenario that keeps to some modalities has no trials in the others, and a tier
            // that serves no scenario has no served answers to compare.
            let scenarios = &playbooks[p].scenarios;
            let serves_one =
                scenarios[..count].iter().any(|s| s.property.is_none() && s.runs_in(Modality::Serve));
            layout.tails.retain(|(kind, _)| match kind {
                TailKind::Scenario { modality, index } => scenarios[*index].runs_in(*modality),
                TailKind::Differential(DiffKind::ServeVsRun) => serves_one,
                TailKind::Gate(_)
                | TailKind::ServerGate(_)
                | TailKind::Security(_)
                | TailKind::Golden(_)
                | TailKind::Differential(_)
                | TailKind::Numerics
                | TailKind::KernelClass
                | TailKind::Perf => true,
            });
            layout.tails.sort_by(|a, b| a.1.cmp(&b.1));
        }
    }
}
