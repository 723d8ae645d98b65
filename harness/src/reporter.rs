//! All wording the harness shows a person on stderr, in one place.

use std::collections::BTreeMap;
use std::io::Write;

use crate::failure::{Bug, Failure, NoTrialsFound, UserError, exit};
use crate::playbook::Notice;

/// Says why the harness stopped before running (or instead of finishing) its trials.
pub(crate) fn failure(failure: &Failure) {
    match failure {
        Failure::User(e) => user_error(e),
        Failure::Bug(bug) => self::bug(bug),
    }
}

fn user_error(err: &UserError) {
    match err {
        UserError::UnknownVariables(unknown) => unknown_variables(unknown),
        UserError::Playbook(_) | UserError::TooManyTrials { .. } => {
            eprintln!("error: {err}");
            eprintln!("note: no trial was run; fix the playbook and run again");
        }
        UserError::NoTrials(found) => no_trials(found, true),
        UserError::Resume { .. } => {
            eprintln!("error: {err}");
            eprintln!(
                "note: QUALIFY_RESUME names a run whose journal is in QUALIFY_JOURNAL_DIR; nothing was run"
            );
        }
        UserError::Config(_)
        | UserError::Journal { .. }
        | UserError::InvalidExactName { .. }
        | UserError::UnknownExactName { .. } => eprintln!("error: {err}"),
    }
}

fn bug(bug: &Bug) {
    eprintln!("error: {bug}");
    eprintln!("note: this is a bug in modelqa, please report it (exit {})", exit::INTERNAL_ERROR);
}

/// Names each `QUALIFY_*` variable the harness does not read, with the one it may have meant,
/// and every variable it does read: a mistyped setting must not run with the default silently.
fn unknown_variables(unknown: &[(String, Option<&'static str>)]) {
    let mut err = std::io::stderr().lock();
    for (name, nearest) in unknown {
        let hint = nearest.map_or_else(String::new, |n| format!("; did you mean {n}?"));
        let _ = writeln!(err, "error: {name} is set but modelqa reads no such variable{hint}");
    }
    let _ = writeln!(
        err,
        "note: modelqa reads {}; nothing was run (unset the variable, or fix its name)",
        crate::config::VARIABLES.join(", ")
    );
}

/// A trial whose measurement was too noisy to judge: shown by libtest as ignored, by nextest as
/// passed, so it is said on stderr as well.
pub(crate) fn unstable(trial: &str, reason: &str) {
    eprintln!("UNSTABLE {trial}: {reason}");
}

/// Says what a filter that selected nothing searched; `fatal` when the run stops on it.
pub(crate) fn no_trials(found: &NoTrialsFound, fatal: bool) {
    let mut err = std::io::stderr().lock();
    let level = if fatal { "error" } else { "warning" };
    let _ = writeln!(err, "{level}: {found}");
    for (family, tiers, source) in &found.playbooks {
        let _ = writeln!(err, "  family {family} (tiers {}) from {}", tiers.join(", "), source.display());
    }
    if let Some(p) = &found.nearest {
        let _ = writeln!(err, "  did you mean `{p}`?");
    }
    if fatal {
        let _ = writeln!(
            err,
            "note: a run that selects nothing fails (exit {}); set QUALIFY_NO_TRIALS=warn or pass to allow it",
            exit::NO_TRIALS
        );
    }
}

/// Says once, by name, what playbooks ask for that this build does not do yet.
pub(crate) fn notices(notices: &[Notice]) {
    let mut by_message: BTreeMap<&str, Vec<&Notice>> = BTreeMap::new();
    for n in notices {
        by_message.entry(n.message.as_str()).or_default().push(n);
    }
    let mut err = std::io::stderr().lock();
    for (message, list) in by_message {
        let first = list[0].file.display();
        let more =
            if list.len() > 1 { format!(" (and {} more playbooks)", list.len() - 1) } else { String::new() };
        let _ = writeln!(err, "note: {first}{more}: {message}");
    }
}

/// Which part of the run this shard takes (`QUALIFY_SHARD`).
pub(crate) fn shard(shard: crate::shard::Shard, a: &crate::shard::Assignment, times: &std::path::Path) {
    let i = shard.index - 1;
    let total: f64 = a.loads.iter().sum();
    let units: usize = a.units.iter().sum();
    let mean = total / a.loads.len().max(1) as f64;
    let longest = a.loads.iter().copied().fold(0.0, f64::max);
    let _ = writeln!(
        std::io::stderr().lock(),
        "shard {}/{} (QUALIFY_SHARD): {} of {units} model × backend groups, about {:.1} s of {:.1} s by the times in {} (longest shard {:.2}× the mean)",
        shard.index,
        shard.count,
        a.units.get(i).copied().unwrap_or(0),
        a.loads.get(i).copied().unwrap_or(0.0) / 1e3,
        total / 1e3,
        times.display(),
        if mean > 0.0 { longest / mean } else { 1.0 }
    );
}

/// What the memory budget did over the run: the most the sessions loaded at once were
/// estimated to hold, and what making room cost. Nothing when no session was loaded.
pub(crate) fn memory(budget: crate::config::MemoryBudget, usage: crate::engine::MemoryUsage) {
    use crate::engine::gib;
    if usage.peak == 0 {
        return;
    }
    let limit = match budget.bytes {
        Some(b) if budget.set => format!("the budget of {} (QUALIFY_MEMORY_BUDGET)", gib(b)),
        Some(b) => format!(
            "the default budget of {} ({}% of this machine's memory; QUALIFY_MEMORY_BUDGET sets it)",
            gib(b),
            crate::config::DEFAULT_MEMORY_SHARE
        ),
        None => "no budget (QUALIFY_MEMORY_BUDGET=unlimited, or this machine's memory is unknown)".into(),
    };
    let mut line = format!(
        "memory: the sessions loaded at once held at most an estimated {} of {limit}",
        gib(usage.peak)
    );
    if let Some(peak) = crate::engine::peak_resident() {
        line.push_str(&format!("; this process's peak resident set was {}", gib(peak)));
    }
    if usage.waited > 0 || usage.evicted > 0 {
        line.push_str(&format!(
            "; {} trial{} waited for room, {} session{} unloaded early to make room",
            usage.waited,
            if usage.waited == 1 { "" } else { "s" },
            usage.evicted,
            if usage.evicted == 1 { " was" } else { "s were" }
        ));
    }
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Groups ignore reasons, so a thousand trials of one missing model make one line.
pub(crate) fn ignored_summary(reasons: &BTreeMap<String, usize>) {
    let mut err = std::io::stderr().lock();
    for (reason, count) in reasons {
        let _ = writeln!(err, "ignored {count} trial{}: {reason}", if *count == 1 { "" } else { "s" });
    }
}

/// Says what a resumed run will do.
pub(crate) fn resuming(run_id: &str, finished: usize, selected: usize) {
    eprintln!(
        "modelqa: resuming run {run_id}: {finished} of the {selected} selected trials finished before it stopped; running the other {}",
        selected - finished
    );
}

pub(crate) fn run_header(selected: usize, total: usize, playbooks: usize, journal: &std::path::Path) {
    eprintln!(
        "modelqa: {selected} of {total} trials selected from {playbooks} playbook{}; evidence → {}",
        if playbooks == 1 { "" } else { "s" },
        journal.display()
    );
}

/// Warns that a server is reachable beyond this machine (it binds `addr`, not loopback).
pub(crate) fn exposed_server(addr: &std::net::SocketAddr, keyed: bool) {
    let mut err = std::io::stderr().lock();
    for line in exposed_server_lines(addr, keyed) {
        let _ = writeln!(err, "{line}");
    }
}

fn exposed_server_lines(addr: &std::net::SocketAddr, keyed: bool) -> [String; 2] {
    let reach = if addr.ip().is_unspecified() {
        format!("{addr}, every network interface of this machine")
    } else {
        format!("{addr}, which is not loopback")
    };
    let who = if keyed {
        "anyone who can reach it and holds the API key can run the model"
    } else {
        "anyone who can reach it can run the model: no API key is asked (--api-key-env)"
    };
    [
        format!("warning: serving on {reach}; {who}"),
        "note: the default, --host 127.0.0.1, serves this machine only".to_string(),
    ]
}

#[cfg(test)]
mod server_tests {
    use super::exposed_server_lines;

    #[test]
    fn an_exposed_server_is_named_with_who_can_use_it() {
        let any: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("an address");
        let [warning, note] = exposed_server_lines(&any, false);
        assert_eq!(
            warning,
            "warning: serving on 0.0.0.0:8080, every network interface of this machine; anyone who can \
             reach it can run the model: no API key is asked (--api-key-env)"
        );
        assert!(note.starts_with("note: ") && note.contains("127.0.0.1"), "{note}");
        let lan: std::net::SocketAddr = "10.1.2.3:80".parse().expect("an address");
        let [warning, _] = exposed_server_lines(&lan, true);
        assert!(warning.contains("10.1.2.3:80, which is not loopback"), "{warning}");
        assert!(warning.contains("holds the API key"), "{warning}");
    }
}
