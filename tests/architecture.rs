//! The module graph of the harness, read from its sources (as rust-analyzer's tidy tests read
//! theirs): which top-level module of `harness/src` names which other through `crate::…`,
//! outside unit tests and comments. The invariants ARCHITECTURE.md states as absences are
//! checked here, so a change that breaks one fails with the edge that did.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("harness/src reads") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to: `checks` for `checks/gate.rs`, `run` for `run.rs`.
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).expect("under the root");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

/// The text of a file without comments and without its `#[cfg(test)]` items (the block that
/// follows the attribute, braces matched).
fn code_of(text: &str) -> String {
    let text: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        // The item ends at the `}` that closes its first `{`, or at a `;` before any `{`.
        let mut depth = 0usize;
        let mut end = after.len();
        for (j, c) in after.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => {
                    end = j + 1;
                    break;
                }
                '}' => depth = depth.saturating_sub(1),
                ';' if depth == 0 => {
                    end = j + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Module names a piece of code reaches through `crate::`: `crate::engine::X` and each first
/// segment of a group, `use crate::{engine::X, vocab}`.
fn referenced(code: &str) -> BTreeSet<String> {
    let ident =
        |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find("};").unwrap_or(group.len())];
            // Top-level entries of the group: split on commas outside nested braces.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in inner.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(inner[start..j].trim()));
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            out.insert(ident(inner[start..].trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

fn graph() -> Graph {
    let root = sources();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let module = module_of(&root, &file);
        // The crate root and the support module face outward: they re-export, nothing uses them.
        if module == "lib" || module == "support" {
            continue;
        }
        // Unit tests kept in files of their own (`#[path = "…_tests.rs"] mod tests;`).
        if file.file_name().is_some_and(|n| n.to_string_lossy().ends_with("_tests.rs")) {
            continue;
        }
        let code = code_of(&std::fs::read_to_string(&file).expect("a source file reads"));
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(referenced(&code).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle of the graph, if it has one (depth-first search with colours).
fn find_cycle(graph: &Graph) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &Graph,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|n| n == next).expect("on the path");
                    let mut cycle = path[start..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn edges_into(graph: &Graph, target: &str) -> Vec<String> {
    graph.iter().filter(|(_, to)| to.contains(target)).map(|(from, _)| from.clone()).collect()
}

#[test]
fn the_reader_sees_groups_nested_groups_and_paths() {
    let code = "use crate::{engine::{A, B}, vocab::Outcome};\nlet x = crate::journal::read(p);";
    let found: Vec<String> = referenced(code).into_iter().collect();
    assert_eq!(found, ["engine", "journal", "vocab"]);
    let code = code_of(
        "use crate::a; // crate::b\n#[cfg(test)]\nmod tests { fn f() { crate::c::x(); } }\nfn g() { crate::d::y(); }",
    );
    assert_eq!(referenced(&code).into_iter().collect::<Vec<_>>(), ["a", "d"]);
}

#[test]
fn the_cycle_finder_finds_a_planted_cycle_and_passes_a_layered_graph() {
    let mut g = Graph::new();
    g.entry("run".into()).or_default().extend(["trial".to_string(), "checks".to_string()]);
    g.entry("checks".into()).or_default().insert("trial".into());
    g.entry("trial".into()).or_default().insert("vocab".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("trial".into()).or_default().insert("checks".into());
    assert_eq!(find_cycle(&g), Some(vec!["checks".into(), "trial".into(), "checks".into()]));
}

#[test]
fn no_module_imports_another_in_a_cycle() {
    let g = graph();
    assert!(g.len() > 10, "the harness sources were read: {g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!("an import cycle between top-level modules of harness/src: {}", cycle.join(" → "));
    }
}

#[test]
fn the_verdict_vocabulary_is_a_leaf() {
    let g = graph();
    let from_vocab = g.get("vocab").cloned().unwrap_or_default();
    assert!(from_vocab.is_empty(), "vocab must import nothing from the crate; it imports {from_vocab:?}");
}

#[test]
fn lower_passes_never_reach_up() {
    let g = graph();
    // Pass 4's entry is reached only from the command line; the trial rooms are reached only
    // from pass 4's entry (and checks may use the modality's HTTP plumbing, never the reverse).
    let rules: [(&str, &[&str]); 5] = [
        ("run", &["cli"]),
        ("checks", &["run"]),
        ("modality", &["run"]),
        ("trial", &["run", "checks", "modality", "cli"]),
        ("certify", &[]),
    ];
    for (module, allowed) in rules {
        let from: Vec<String> =
            edges_into(&g, module).into_iter().filter(|m| !allowed.contains(&m.as_str())).collect();
        assert!(from.is_empty(), "`{module}` may be imported only by {allowed:?}; also by {from:?}");
    }
    // Expansion is pure: it names checks through the vocabulary, never runs them.
    let expand = g.get("expand").cloned().unwrap_or_default();
    for runtime in ["engine", "checks", "trial", "run", "format", "oracle", "journal"] {
        assert!(!expand.contains(runtime), "expand imports the run-time module `{runtime}`");
    }
}
