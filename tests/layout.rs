//! The module graph has no cycles: no module of `src/` refers to one that refers back to it, directly
//! or through others. A parent that uses its children is fine; a child that reaches back into its
//! parent (or any two siblings that use each other) is a cycle, and this test names it.
//!
//! The graph is read from the source text: every `crate::a::b` and `super::x` path, and every use of a
//! child module by its bare name (`cache_step::lookup` in `proxy/mod.rs`), outside comments and the
//! unit tests at the end of a file (`#[cfg(test)] mod tests`), resolved to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn the_module_graph_has_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules_of(&src);
    assert!(modules.len() > 20, "expected the crate's modules under {}, found {modules:?}", src.display());
    let graph = graph_of(&modules);
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles (move what both sides need into a module of its own):\n{}",
        cycles.iter().map(|c| format!("  {}", c.join(" -> "))).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn the_check_finds_a_cycle_it_is_shown() {
    let mut graph = Graph::new();
    graph.entry("proxy".into()).or_default().insert("proxy::cache_step".into());
    graph.entry("proxy::cache_step".into()).or_default().insert("server".into());
    graph.entry("server".into()).or_default().insert("proxy".into());
    graph.entry("cache".into()).or_default();
    assert_eq!(cycles(&graph), vec![vec!["proxy", "proxy::cache_step", "server", "proxy"]]);

    let modules = BTreeMap::from([
        ("proxy".to_string(), "pub mod cache_step;\nfn f() { cache_step::run(); }\n".to_string()),
        ("proxy::cache_step".to_string(), "use super::Outcome; // crate::server is a comment\n".to_string()),
        (
            "proxy::forward".to_string(),
            "use super::{cache_step, Outcome};\nuse crate::{cache::{self, Entry}, server};\n".to_string(),
        ),
        ("cache".to_string(), String::new()),
        ("server".to_string(), "#[cfg(test)]\nmod tests {\n use crate::proxy;\n}\n".to_string()),
    ]);
    let graph = graph_of(&modules);
    assert_eq!(graph["proxy"], BTreeSet::from(["proxy::cache_step".to_string()]));
    assert_eq!(graph["proxy::cache_step"], BTreeSet::from(["proxy".to_string()]));
    assert!(graph["server"].is_empty(), "unit tests and comments are not edges: {graph:?}");
    let groups = ["cache", "proxy", "proxy::cache_step", "server"].map(String::from);
    assert_eq!(graph["proxy::forward"], BTreeSet::from(groups), "every member of a group is an edge");
}

/// Module path (`proxy::cache_step`) → source text, for every file under `src/` but `lib.rs`.
fn modules_of(src: &Path) -> BTreeMap<String, String> {
    let mut files = Vec::new();
    collect_rs(src, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src").with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().map(String::as_str) == Some("mod") {
            parts.pop();
        }
        if parts.is_empty() || parts == ["lib"] {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        modules.insert(parts.join("::"), text);
    }
    modules
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn graph_of(modules: &BTreeMap<String, String>) -> Graph {
    let known: BTreeSet<&str> = modules.keys().map(String::as_str).collect();
    let mut graph = Graph::new();
    for (module, text) in modules {
        let children: Vec<&str> =
            known.iter().filter_map(|m| m.strip_prefix(module.as_str())?.strip_prefix("::")).collect();
        let parent = module.rsplit_once("::").map(|(p, _)| p);
        let mut edges = BTreeSet::new();
        for line in code_lines(text) {
            for path in paths_after(line, "crate::") {
                edges.extend(resolve(&known, &path));
            }
            for path in paths_after(line, "super::") {
                let full = match (parent, path.is_empty()) {
                    (Some(p), false) => format!("{p}::{path}"),
                    (Some(p), true) => p.to_string(),
                    (None, _) => path,
                };
                edges.extend(resolve(&known, &full));
            }
            for child in &children {
                if !child.contains("::") && mentions_bare(line, child) {
                    edges.insert(format!("{module}::{child}"));
                }
            }
        }
        edges.remove(module);
        graph.insert(module.clone(), edges);
    }
    graph
}

/// The code of a file: comment lines dropped, and nothing from `#[cfg(test)]` followed by
/// `mod tests` on.
fn code_lines(text: &str) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    let mut code = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let opens_tests = |n: &&str| {
            let n = n.trim_start();
            ["mod tests", "pub mod tests", "pub(crate) mod tests"].iter().any(|m| n.starts_with(m))
        };
        if trimmed == "#[cfg(test)]" && lines.get(i + 1).is_some_and(opens_tests) {
            break;
        }
        if trimmed.starts_with("//") || trimmed.starts_with("pub mod ") || trimmed.starts_with("mod ") {
            continue;
        }
        code.push(line.split(" // ").next().unwrap_or(line));
    }
    code
}

/// Every `a::b::c` that follows `prefix` in `line` (lower-case segments only: modules, not items);
/// a group (`super::{a, b::C}`) gives one path per member.
fn paths_after(line: &str, prefix: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find(prefix) {
        let before = rest[..at].chars().last();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        match rest.strip_prefix('{') {
            Some(group) => found.extend(group_members(group).into_iter().map(module_part)),
            None => found.push(module_part(rest)),
        }
    }
    found
}

/// The members of a `{...}` group up to its closing brace, split at top-level commas.
fn group_members(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut members) = (0usize, 0usize, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                members.push(group[start..i].trim());
                return members;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                members.push(group[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(group[start..].trim());
    members
}

/// The leading module segments of a path (`b::c::Item` → `b::c`); empty when it names an item of
/// the module itself (`Outcome`, `self`).
fn module_part(path: &str) -> String {
    let path: String = path.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
    let segments: Vec<&str> = path
        .split("::")
        .take_while(|s| {
            !s.is_empty() && *s != "self" && s.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        })
        .collect();
    segments.join("::")
}

/// The longest known module that `path` starts with.
fn resolve(known: &BTreeSet<&str>, path: &str) -> Option<String> {
    let segments: Vec<&str> = path.split("::").collect();
    (1..=segments.len()).rev().map(|n| segments[..n].join("::")).find(|m| known.contains(m.as_str()))
}

/// `child::` used in `line` without a path before it (so not `other::child::`).
fn mentions_bare(line: &str, child: &str) -> bool {
    let needle = format!("{child}::");
    line.match_indices(&needle).any(|(at, _)| {
        let before = &line[..at];
        !before.ends_with("::") && !before.chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_')
    }) || line.trim_start().starts_with(&format!("use {child}::"))
}

/// One shortest cycle per strongly connected group of modules, starting at its smallest module.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let reaches = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(node) = todo.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|n| (n, reaches(n))).collect();
    let mut done = BTreeSet::new();
    let mut found = Vec::new();
    for node in graph.keys() {
        if done.contains(node) || !reach[node].contains(node) {
            continue;
        }
        let group: BTreeSet<String> =
            reach[node].iter().filter(|m| reach.get(m).is_some_and(|r| r.contains(node))).cloned().collect();
        done.extend(group.iter().cloned());
        // Breadth-first from `node` back to itself inside its group: the shortest way round.
        let mut came_from: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([node.clone()]);
        'search: while let Some(at) = queue.pop_front() {
            for next in graph.get(&at).into_iter().flatten().filter(|n| group.contains(*n)) {
                if next == node {
                    came_from.insert(format!("{node}#end"), at.clone());
                    break 'search;
                }
                if !came_from.contains_key(next) {
                    came_from.insert(next.clone(), at.clone());
                    queue.push_back(next.clone());
                }
            }
        }
        let mut cycle = vec![node.clone()];
        let mut at = came_from[&format!("{node}#end")].clone();
        while &at != node {
            cycle.push(at.clone());
            at = came_from[&at].clone();
        }
        cycle.push(node.clone());
        cycle.reverse();
        if group.len() > cycle.len() - 1 {
            let others: Vec<&str> = group.iter().filter(|m| !cycle.contains(m)).map(String::as_str).collect();
            cycle.push(format!("(and through {})", others.join(", ")));
        }
        found.push(cycle);
    }
    found
}
