//! Keeps the files of each library crate layered: a top-level module may use another
//! (`crate::other`), but no chain of such uses may lead back to where it started. A
//! newcomer can then read a crate bottom-up, and a change low down never needs one high
//! up. Modules inside a folder (`destination/s3.rs`) count as their top-level module.
//! Comment lines are ignored, so a doc link is not an import.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const LAYERED: &[&str] = &["pipeline", "stages", "ui"];

/// Top-level module name → the top-level modules its files use.
fn graph(crate_dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(crate_dir)
        .join("src");
    let mut texts: Vec<(String, String)> = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read the source folder") {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&src).unwrap();
                let top = rel
                    .components()
                    .next()
                    .unwrap()
                    .as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string();
                let code: String = std::fs::read_to_string(&path)
                    .expect("read a source file")
                    .lines()
                    .filter(|l| !l.trim_start().starts_with("//"))
                    .collect::<Vec<_>>()
                    .join("\n");
                texts.push((top, code));
            }
        }
    }
    let modules: BTreeSet<String> = texts
        .iter()
        .map(|(m, _)| m.clone())
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (me, code) in &texts {
        let uses = edges.entry(me.clone()).or_default();
        for piece in code.split("crate::").skip(1) {
            let name: String = piece
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if modules.contains(&name) && &name != me {
                uses.insert(name);
            }
        }
    }
    edges
}

/// Groups of two or more modules that reach one another (Tarjan's algorithm).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        for next in w.edges.get(v).into_iter().flatten() {
            let next = next.as_str();
            if !w.index.contains_key(next) {
                visit(w, next);
                let l = w.low[v].min(w.low[next]);
                w.low.insert(v, l);
            } else if w.stack.contains(&next) {
                let l = w.low[v].min(w.index[next]);
                w.low.insert(v, l);
            }
        }
        if w.low[v] == w.index[v] {
            let mut group = Vec::new();
            while let Some(top) = w.stack.pop() {
                group.push(top.to_string());
                if top == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                w.found.push(group);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

#[test]
fn library_modules_use_each_other_without_circles() {
    let mut report = Vec::new();
    for krate in LAYERED {
        let edges = graph(krate);
        assert!(edges.len() > 5, "{krate}: no modules found");
        for group in circles(&edges) {
            let detail: Vec<String> = group
                .iter()
                .map(|m| {
                    let inside: Vec<&str> = edges[m]
                        .iter()
                        .filter(|d| group.contains(d))
                        .map(String::as_str)
                        .collect();
                    format!("{m} -> {}", inside.join(", "))
                })
                .collect();
            report.push(format!("{krate}: {}", detail.join("; ")));
        }
    }
    assert!(
        report.is_empty(),
        "import circles (move what both sides need below them):\n{}",
        report.join("\n")
    );
}

/// The check itself finds a circle when there is one (positive control).
#[test]
fn a_circle_is_found() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |a: &str, b: &str| {
        edges.entry(a.into()).or_default().insert(b.into());
        edges.entry(b.into()).or_default();
    };
    add("config", "store");
    add("store", "config");
    add("store", "keys");
    add("runner", "store");
    assert_eq!(
        circles(&edges),
        vec![vec!["config".to_string(), "store".to_string()]]
    );
}
