//! Imports in `src/` point one way: no module imports, directly or through others, a
//! module that imports it back. Each `crate::a::b` or `super::…` path in code (comments
//! and `#[cfg(test)] mod tests` left out) is an edge from the module of the file to the
//! deepest module the path names; an edge between a module and its own parent or child
//! does not count (a parent declares its children and re-exports them). A cycle fails
//! the test naming the modules on it and the files that import. No binary needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use protocol_tests::harness::root;

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file relative to `src/` (`server/fastcgi/mod.rs` →
/// `["server", "fastcgi"]`; `lib.rs` and `main.rs` → `[]`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

/// The code of a file without comments and without its unit-test module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::…`/`super::…` paths in `code`, as lists of segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !code.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let starts = (code[i..].starts_with("crate::") || code[i..].starts_with("super::"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let end = code[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(code.len(), |e| i + e);
        out.push(
            code[i..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        );
        i = end;
    }
    out
}

/// Module → (module it imports → files that do).
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

fn import_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<Vec<String>> = files
        .iter()
        .map(|f| module_of(f.strip_prefix(src).unwrap()))
        .collect();
    let mut graph = Graph::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        let me = module_of(rel);
        let text = std::fs::read_to_string(file).unwrap();
        for path in paths(&code(&text)) {
            let (mut base, rest) = if path[0] == "crate" {
                (Vec::new(), &path[1..])
            } else {
                let is_mod_file = matches!(
                    rel.file_stem().and_then(|s| s.to_str()),
                    Some("mod" | "lib" | "main")
                );
                // `super` in a/b.rs is `a`; in a/b/mod.rs (module a::b) it is `a` too.
                let mut base = me.clone();
                if !is_mod_file || !base.is_empty() {
                    base.pop();
                }
                let mut rest = &path[1..];
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            };
            base.extend(rest.iter().cloned());
            let Some(target) = (1..=base.len())
                .rev()
                .map(|k| base[..k].to_vec())
                .find(|m| modules.contains(m))
            else {
                continue;
            };
            let (a, b) = (me.join("::"), target.join("::"));
            let related = a == b
                || a.is_empty()
                || b.is_empty()
                || b.starts_with(&format!("{a}::"))
                || a.starts_with(&format!("{b}::"));
            if !related {
                graph
                    .entry(a)
                    .or_default()
                    .entry(b)
                    .or_default()
                    .insert(rel.display().to_string());
            }
        }
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(edges) = s.graph.get(v) {
            for w in edges.keys() {
                let w = w.as_str();
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                comp.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.found.push(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn src_has_no_module_import_cycle() {
    let graph = import_graph(&root().join("src"));
    // A scan that finds nothing would pass whatever the code does.
    let edges: usize = graph.values().map(BTreeMap::len).sum();
    assert!(
        edges > 30,
        "only {edges} imports found in src/: the scan is broken"
    );
    let found = cycles(&graph);
    let report: Vec<String> = found
        .iter()
        .map(|comp| {
            let mut lines = vec![format!("cycle among {}:", comp.join(", "))];
            for a in comp {
                for (b, files) in &graph[a] {
                    if comp.contains(b) {
                        let files: Vec<&str> = files.iter().map(String::as_str).collect();
                        lines.push(format!("  {a} -> {b} (in {})", files.join(", ")));
                    }
                }
            }
            lines.join("\n")
        })
        .collect();
    assert!(found.is_empty(), "{}", report.join("\n"));
}

#[test]
fn a_cycle_is_found_and_named() {
    // The check itself: two modules importing each other are reported.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a;\npub mod b;\npub mod c;\n").unwrap();
    std::fs::write(
        src.join("a/mod.rs"),
        "pub mod inner;\nuse crate::b::Thing;\n",
    )
    .unwrap();
    std::fs::write(src.join("a/inner.rs"), "use super::super::c::X;\n").unwrap();
    std::fs::write(
        src.join("b.rs"),
        "// use crate::c::Y; (a comment)\nuse crate::a::inner::Z;\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "pub struct X;\n").unwrap();
    let graph = import_graph(src);
    assert!(graph["a::inner"].contains_key("c"), "{graph:?}");
    assert!(
        !graph["b"].contains_key("c"),
        "comments are not imports: {graph:?}"
    );
    let found = cycles(&graph);
    // b -> a::inner is an edge to a child of a; a -> b closes a cycle only through
    // a's child, which is a different module: no cycle between a and b here.
    assert!(found.is_empty(), "{found:?}");
    std::fs::write(src.join("c.rs"), "use crate::a::inner::Z;\n").unwrap();
    let found = cycles(&import_graph(src));
    assert_eq!(found.len(), 1, "{found:?}");
    let mut comp = found[0].clone();
    comp.sort();
    assert_eq!(comp, ["a::inner", "c"]);
}
