//! Expansion (pass 2): playbooks → the sorted, named trials they define. Pure and deterministic:
//! no I/O, no models. The command-line filter is applied here, while names are generated, so a
//! run that selects 1% of 1.8 million trials allocates only that 1%.

use std::sync::Arc;

use memchr::memmem;

use crate::matrix::{Backend, Format, Modality};
use crate::name::{SEP, Tail, TrialName};
use crate::playbook::{Model, Playbook, Scenario, TierPlan};

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

/// The cells and tails of one `(playbook, tier)`, in name order.
#[derive(Debug)]
struct Layout {
    /// `(format, backend)` with their `format::backend::` text.
    cells: Vec<(Format, Backend, String)>,
    /// `modality::scenario` with its scenario index.
    tails: Vec<(Modality, usize, String)>,
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

/// A selected trial with everything its body needs.
#[derive(Debug, Clone)]
pub struct TrialSpec {
    pub name: TrialName,
    pub full_name: String,
    pub model: Model,
    pub tier: TierPlan,
    pub scenario: Arc<Scenario>,
    pub modality: Modality,
    pub playbook: usize,
    pub source: std::path::PathBuf,
}

impl Plan {
    pub fn new(playbooks: Vec<Playbook>) -> Self {
        let mut groups = Vec::new();
        let mut layouts = Vec::new();
        for (p, pb) in playbooks.iter().enumerate() {
            let mut per_tier = Vec::new();
            for (t, tier) in pb.tiers.iter().enumerate() {
                per_tier.push(layout(tier));
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
                l.cells.len() * l.tails.len()
            })
            .sum()
    }

    /// Calls `f` with every trial that passes `filter`, in name order, and its full name.
    pub fn for_each_selected(&self, filter: &Filter, mut f: impl FnMut(TrialRef, &str)) {
        let finder = filter.finder();
        let mut name = String::with_capacity(160);
        for (g, group) in self.groups.iter().enumerate() {
            let layout = &self.layouts[group.playbook][group.tier];
            for (c, (_, _, cell)) in layout.cells.iter().enumerate() {
                for (t, (_, _, tail)) in layout.tails.iter().enumerate() {
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
        let t = layout.tails.iter().position(|(_, _, text)| *text == tail_text)?;
        Some(TrialRef { group: g as u32, cell: c as u32, tail: t as u32 })
    }

    /// Everything about one trial.
    pub fn spec(&self, r: TrialRef) -> TrialSpec {
        let group = &self.groups[r.group as usize];
        let pb = &self.playbooks[group.playbook];
        let tier = &pb.tiers[group.tier];
        let layout = &self.layouts[group.playbook][group.tier];
        let (format, backend, _) = layout.cells[r.cell as usize];
        let (modality, scenario_idx, _) = layout.tails[r.tail as usize];
        let scenario = pb.scenarios[scenario_idx].clone();
        let model = pb.models[group.model].clone();
        let name = TrialName {
            family: pb.family.clone(),
            tier: tier.name.clone(),
            model: model.slug.clone(),
            format,
            backend,
            tail: Tail::Scenario { modality, scenario: scenario.name.clone() },
        };
        TrialSpec {
            full_name: name.to_string(),
            name,
            model,
            tier: tier.clone(),
            scenario,
            modality,
            playbook: group.playbook,
            source: pb.source.clone(),
        }
    }
}

fn layout(tier: &TierPlan) -> Layout {
    let mut cells = Vec::new();
    for f in &tier.formats {
        for b in &tier.backends {
            cells.push((*f, *b, format!("{f}{SEP}{b}{SEP}")));
        }
    }
    // Each segment already sorts as its name followed by `::`, but a format name can be a prefix
    // of another's, so sort the joined text.
    cells.sort_by(|a, b| a.2.cmp(&b.2));
    let mut tails = Vec::new();
    for m in &tier.modalities {
        for s in 0..tier.scenario_count {
            tails.push((*m, s, String::new()));
        }
    }
    // Named by `name_tails`, which knows the scenarios.
    Layout { cells, tails }
}

/// Fills the tail texts of each layout from its playbook's scenario names.
fn name_tails(playbooks: &[Playbook], layouts: &mut [Vec<Layout>]) {
    for (p, per_tier) in layouts.iter_mut().enumerate() {
        for layout in per_tier.iter_mut() {
            for (m, s, text) in layout.tails.iter_mut() {
                *text = format!("{m}{SEP}{}", playbooks[p].scenarios[*s].name);
            }
            layout.tails.sort_by(|a, b| a.2.cmp(&b.2));
        }
    }
}
