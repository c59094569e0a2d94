//! The shape of the code, checked so that it stays as the house keeps it (issue 23):
//! - no source file over 400 lines: a file that grows past it has more than one job;
//! - no function over 80 lines unless a plain `// Kept whole …` comment above it says why;
//! - no import circle between the files of a crate: every `crate::`/`super::` path points one way. (A
//!   path to an item the crate root re-exports counts only when it names the module; the root's own
//!   re-exports are a facade, not a use.)
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 400;
const MAX_FN_LINES: usize = 80;

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn all_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&crates_dir(), &mut files);
    files.sort();
    files
}

#[test]
fn no_source_file_is_over_400_lines() {
    let long: Vec<String> = all_files()
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(f).unwrap().lines().count();
            (lines > MAX_FILE_LINES).then(|| format!("{} ({lines})", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "split along its seams: {long:?}");
}

/// The name of the function a line starts, if it does (`pub(crate) async fn name(`…).
fn fn_name(line: &str) -> Option<&str> {
    let mut rest = line.trim_start();
    for prefix in [
        "pub(crate) ",
        "pub(super) ",
        "pub ",
        "const ",
        "async ",
        "unsafe ",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let name = rest.strip_prefix("fn ")?;
    let end = name.find(|c: char| !(c.is_alphanumeric() || c == '_'))?;
    Some(&name[..end])
}

/// Functions over `max` lines in `source` without a `// Kept whole` comment among the comments and
/// attributes just above them: `(name, first line, length)`.
fn long_functions(source: &str, max: usize) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = source.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let indent = &line[..line.len() - line.trim_start().len()];
        let Some(open) = (i..lines.len()).find(|&j| {
            let l = lines[j].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue; // a declaration in a trait
        }
        let close = (open + 1..lines.len())
            .find(|&j| lines[j] == format!("{indent}}}"))
            .unwrap_or_else(|| {
                panic!("fn {name} (line {}): no closing brace at its indent", i + 1)
            });
        let length = close - i + 1;
        let explained = lines[..i]
            .iter()
            .rev()
            .take_while(|l| {
                let l = l.trim_start();
                l.starts_with("//") || l.starts_with("#[")
            })
            .any(|l| l.trim_start().starts_with("// Kept whole"));
        if length > max && !explained {
            out.push((name.to_owned(), i + 1, length));
        }
    }
    out
}

#[test]
fn no_function_is_over_80_lines_without_saying_why() {
    let mut long = Vec::new();
    for file in all_files() {
        let source = std::fs::read_to_string(&file).unwrap();
        for (name, line, length) in long_functions(&source, MAX_FN_LINES) {
            long.push(format!("{}:{line} {name} ({length} lines)", file.display()));
        }
    }
    assert!(
        long.is_empty(),
        "split it, or say why above it (`// Kept whole …`): {long:?}"
    );
}

#[test]
fn the_long_function_check_finds_a_long_function_and_accepts_a_reason() {
    let body = "    x();\n".repeat(MAX_FN_LINES);
    let long = format!("pub async fn long() {{\n{body}}}\n");
    assert_eq!(
        long_functions(&long, MAX_FN_LINES),
        vec![("long".to_owned(), 1, MAX_FN_LINES + 2)]
    );
    let kept = format!("// Kept whole: one story.\n#[test]\n{long}");
    assert!(long_functions(&kept, MAX_FN_LINES).is_empty());
}

/// The modules of one crate's `src/`, by path (`a::b` for `a/b.rs` or `a/b/mod.rs`; the root is ``),
/// each with the crate modules it names through `crate::` or `super::` outside comments and tests.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut sources = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        if matches!(
            parts.last().map(String::as_str),
            Some("mod" | "lib" | "main")
        ) {
            parts.pop();
        }
        if parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        let code: String = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        sources.insert(parts.join("::"), code);
    }
    let modules: BTreeSet<String> = sources.keys().cloned().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &sources {
        let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
        let mut named = Vec::new();
        for (marker, base) in [("crate::", ""), ("super::", parent)] {
            for (at, _) in code.match_indices(marker) {
                let rest = &code[at + marker.len()..];
                if let Some(list) = rest.strip_prefix('{') {
                    // `use crate::{a, b::{c, d}}`: the items at the top level of the braces.
                    named.extend(top_level_items(list).into_iter().map(|i| join(base, &i)));
                } else {
                    let end = rest
                        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                        .unwrap_or(rest.len());
                    named.push(join(base, &rest[..end]));
                }
            }
        }
        let mut uses = BTreeSet::new();
        for path in named {
            // The longest prefix of the path that is a module of this crate.
            let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
            if let Some(target) = (1..=parts.len())
                .rev()
                .map(|k| parts[..k].join("::"))
                .find(|t| modules.contains(t))
            {
                let nested = |a: &str, b: &str| a.starts_with(&format!("{b}::"));
                if target != *module && !nested(module, &target) && !nested(&target, module) {
                    uses.insert(target);
                }
            }
        }
        graph.insert(module.clone(), uses);
    }
    graph
}

/// The items of a `use` list up to its closing brace, each as the path it starts with: `a, b::{c, d}}`
/// gives `a` and `b` (nested lists are read as their prefix: enough to know which module is named).
fn top_level_items(list: &str) -> Vec<String> {
    let mut items = vec![String::new()];
    let mut depth = 0;
    for c in list.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(String::new()),
            _ if depth == 0 => items.last_mut().unwrap().push(c),
            _ => {}
        }
    }
    items
        .into_iter()
        .map(|i| i.trim().trim_end_matches("::").to_owned())
        .filter(|i| !i.is_empty())
        .collect()
}

#[test]
fn a_use_list_with_nested_braces_names_each_top_level_item() {
    assert_eq!(
        top_level_items("a::{B, C}, d, e::f as g}; rest"),
        ["a", "d", "e::f as g"].map(str::to_owned)
    );
}

fn join(base: &str, path: &str) -> String {
    if base.is_empty() {
        path.to_owned()
    } else {
        format!("{base}::{path}")
    }
}

/// A circle in `graph`, if there is one: the modules along it, the first repeated at the end.
fn a_circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut circle = path[at..].to_vec();
            circle.push(node.to_owned());
            return Some(circle);
        }
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(circle) = visit(next, graph, path, done) {
                return Some(circle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_an_import_circle_between_its_files() {
    let mut circles = Vec::new();
    for entry in std::fs::read_dir(crates_dir()).unwrap().flatten() {
        let src = entry.path().join("src");
        if src.is_dir() {
            if let Some(circle) = a_circle(&module_graph(&src)) {
                circles.push(format!(
                    "{}: {}",
                    entry.file_name().to_string_lossy(),
                    circle.join(" → ")
                ));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "give what both sides need a module of its own: {circles:?}"
    );
}

#[test]
fn the_circle_check_finds_a_circle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        a_circle(&graph).unwrap(),
        ["a", "b", "c", "a"].map(str::to_owned)
    );
    let mut acyclic = graph;
    acyclic.get_mut("c").unwrap().clear();
    assert_eq!(a_circle(&acyclic), None);
}
