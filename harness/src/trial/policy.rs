//! The failure policy's memory: the first failure of the run and the gateways that failed in
//! each session, so `stop-on-first` and `stop-on-p0` can skip what follows. Under nextest every
//! trial is its own process, so other processes' failures are read back from the shared journal.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use crate::engine::SessionKey;
use crate::expand::TrialSpec;
use crate::journal::EvidenceRecord;
use crate::playbook::FailurePolicy;

use super::Finding;

#[derive(Default)]
pub(crate) struct PolicyState {
    first_failure: Mutex<Option<String>>,
    failed_gates: Mutex<HashMap<SessionKey, String>>,
}

impl PolicyState {
    /// Why the policy stops this trial from running, if it does. `shared_journal` is the
    /// journal other processes of this run append to (under nextest).
    pub(crate) fn blocked(
        &self,
        policy: FailurePolicy,
        key: &SessionKey,
        spec: &TrialSpec,
        shared_journal: Option<&Path>,
    ) -> Option<String> {
        match policy {
            FailurePolicy::CollectAll => None,
            FailurePolicy::StopOnFirst => {
                let local = self.first_failure.lock().unwrap_or_else(|p| p.into_inner()).clone();
                local
                    .or_else(|| {
                        journal_failures(shared_journal, |r| !r.outcome.is_pass() && r.outcome.is_verdict())
                    })
                    .map(|first| format!("not run: the failure policy is stop-on-first and {first} failed"))
            }
            FailurePolicy::StopOnP0 => {
                let local = self.failed_gates.lock().unwrap_or_else(|p| p.into_inner()).get(key).cloned();
                local
                    .or_else(|| {
                        journal_failures(shared_journal, |r| {
                            r.gate.gateway().is_some()
                                && !r.outcome.is_pass()
                                && r.outcome.is_verdict()
                                && r.model == spec.name.model
                                && r.format == spec.name.format.name()
                                && r.backend == spec.name.backend.as_str()
                        })
                        .map(|t| format!("a gateway failed in {t}"))
                    })
                    .map(|why| format!("not run: {why} (failure policy stop-on-p0, {key})"))
            }
        }
    }

    /// Remembers a trial's failure for the trials after it.
    pub(crate) fn note(&self, spec: &TrialSpec, key: &SessionKey, finding: &Finding) {
        if finding.outcome.is_pass() || !finding.outcome.is_verdict() {
            return;
        }
        self.first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| spec.full_name.clone());
        if let Some(gate) = finding.decider.gateway() {
            self.failed_gates
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(key.clone())
                .or_insert_with(|| format!("gateway {} failed in {}", gate.id(), spec.full_name));
        }
    }
}

/// The first trial of the shared journal that `pred` picks.
fn journal_failures(journal: Option<&Path>, pred: impl Fn(&EvidenceRecord) -> bool) -> Option<String> {
    let (records, _) = crate::journal::read(journal?).ok()?;
    records.into_iter().find(|r| pred(r)).map(|r| r.trial)
}
