//! Finds import circles of more than two modules inside a Rust crate.
//!
//! Every file module is a node; every path in a file that starts with
//! `crate`, `super` or `self` (in a `use` or in code) is an edge to the
//! deepest module it names, following `pub use` re-exports to where the
//! item lives. Comments and strings are not read.
//!
//! A module and its own ancestors may refer to each other freely (a parent
//! declares its children and a child sees its parent's private items), so
//! circles are looked for among siblings: for each module, among its child
//! modules, an edge between two files counting as an edge between the two
//! children whose subtrees hold them. A strongly connected set of more than
//! two siblings is a circle to break. So `crate::a -> crate::b -> crate::a`
//! is allowed, `a -> b -> c -> a` is not, at any depth.

mod lex;
mod parse;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use parse::{Parsed, parse};

/// A module path below the crate root (`[]` is the root).
type ModPath = Vec<String>;

/// One reference from a module to another, with where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The module that refers (a child of the circle's parent).
    pub from: String,
    /// The module referred to (another child).
    pub to: String,
    /// The first place it is written, `file:line`.
    pub at: String,
}

/// Sibling modules that import each other in a circle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Circle {
    /// The crate's root file.
    pub crate_root: PathBuf,
    /// The modules' parent (`crate` for top-level modules).
    pub within: String,
    /// The modules, by name.
    pub modules: Vec<String>,
    /// The edges between them.
    pub edges: Vec<Edge>,
}

impl fmt::Display for Circle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} modules in {} import each other in a circle: {}",
            self.crate_root.display(),
            self.modules.len(),
            self.within,
            self.modules.join(", ")
        )?;
        for e in &self.edges {
            writeln!(f, "  {} -> {}  ({})", e.from, e.to, e.at)?;
        }
        Ok(())
    }
}

fn show(path: &[String]) -> String {
    if path.is_empty() {
        "crate".to_owned()
    } else {
        format!("crate::{}", path.join("::"))
    }
}

struct ModFile {
    path: ModPath,
    file: PathBuf,
    parsed: Parsed,
}

/// Reads the crate whose root file is `root`, following `mod x;` declarations.
fn load(root: &Path) -> io::Result<Vec<ModFile>> {
    let mut out = Vec::new();
    let dir = root.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut queue = vec![(ModPath::new(), root.to_path_buf(), dir)];
    while let Some((path, file, children)) = queue.pop() {
        let parsed = parse(&std::fs::read_to_string(&file)?);
        for m in &parsed.mods {
            let mut dir = children.clone();
            for s in &m.scope {
                dir.push(s);
            }
            let mut child = path.clone();
            child.extend(m.scope.iter().cloned());
            child.push(m.name.clone());
            let flat = dir.join(format!("{}.rs", m.name));
            let nested = dir.join(&m.name).join("mod.rs");
            if flat.is_file() {
                queue.push((child, flat, dir.join(&m.name)));
            } else if nested.is_file() {
                queue.push((child, nested, dir.join(&m.name)));
            }
        }
        out.push(ModFile { path, file, parsed });
    }
    Ok(out)
}

/// The absolute module path of `path` written in module `cur`, if it is
/// in this crate.
fn absolute(cur: &[String], path: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let first = path.first()?;
    match first.as_str() {
        "crate" => Some(path[1..].to_vec()),
        "self" => Some(cur.iter().chain(&path[1..]).cloned().collect()),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let keep = cur.len().checked_sub(ups)?;
            Some(cur[..keep].iter().chain(&path[ups..]).cloned().collect())
        }
        _ => {
            // A child module named without `self::` (in a `use`).
            let mut child = cur.to_vec();
            child.push(first.clone());
            modules
                .contains(&child)
                .then(|| cur.iter().chain(path).cloned().collect())
        }
    }
}

#[derive(Default)]
struct Reexports {
    named: HashMap<String, ModPath>,
    globs: Vec<ModPath>,
}

/// The module an absolute path leads to, through re-exports.
fn target(
    abs: &[String],
    modules: &BTreeSet<ModPath>,
    reexports: &HashMap<ModPath, Reexports>,
    depth: usize,
) -> ModPath {
    let mut k = 0;
    while k < abs.len() && modules.contains(&abs[..=k].to_vec()) {
        k += 1;
    }
    let m = abs[..k].to_vec();
    if depth < 8
        && k < abs.len()
        && let Some(r) = reexports.get(&m)
    {
        if let Some(t) = r.named.get(&abs[k]) {
            let p: ModPath = t.iter().chain(&abs[k + 1..]).cloned().collect();
            return target(&p, modules, reexports, depth + 1);
        }
        for g in &r.globs {
            let mut child = g.clone();
            child.push(abs[k].clone());
            if modules.contains(&child)
                || reexports
                    .get(g)
                    .is_some_and(|r| r.named.contains_key(&abs[k]))
            {
                let p: ModPath = g.iter().chain(&abs[k..]).cloned().collect();
                return target(&p, modules, reexports, depth + 1);
            }
        }
    }
    m
}

/// The circles of more than two sibling modules in the crate rooted at `root`.
pub fn check_crate(root: &Path) -> io::Result<Vec<Circle>> {
    let files = load(root)?;
    let modules: BTreeSet<ModPath> = files.iter().map(|f| f.path.clone()).collect();
    let mut reexports: HashMap<ModPath, Reexports> = HashMap::new();
    for f in &files {
        for u in f
            .parsed
            .uses
            .iter()
            .filter(|u| u.public && u.scope.is_empty())
        {
            let Some(abs) = absolute(&f.path, &u.path, &modules) else {
                continue;
            };
            let r = reexports.entry(f.path.clone()).or_default();
            match &u.name {
                Some(n) => {
                    r.named.insert(n.clone(), abs);
                }
                None => r.globs.push(abs),
            }
        }
    }
    // Every reference between two modules, with its first place.
    let mut edges: BTreeMap<(ModPath, ModPath), String> = BTreeMap::new();
    for f in &files {
        let refs = f
            .parsed
            .uses
            .iter()
            .map(|u| (&u.scope, &u.path, u.line))
            .chain(f.parsed.paths.iter().map(|p| (&p.scope, &p.path, p.line)));
        for (scope, path, line) in refs {
            let cur: ModPath = f.path.iter().chain(scope).cloned().collect();
            let Some(abs) = absolute(&cur, path, &modules) else {
                continue;
            };
            let to = target(&abs, &modules, &reexports, 0);
            if to != f.path {
                edges
                    .entry((f.path.clone(), to))
                    .or_insert_with(|| format!("{}:{line}", f.file.display()));
            }
        }
    }
    let mut circles = Vec::new();
    for parent in &modules {
        let k = parent.len();
        // Edges between two children of `parent`, by child name.
        let mut sibling: BTreeMap<(String, String), String> = BTreeMap::new();
        for ((from, to), at) in &edges {
            if from.len() > k
                && to.len() > k
                && from.starts_with(parent)
                && to.starts_with(parent)
                && from[k] != to[k]
            {
                sibling
                    .entry((from[k].clone(), to[k].clone()))
                    .or_insert_with(|| at.clone());
            }
        }
        for scc in strongly_connected(&sibling) {
            if scc.len() > 2 {
                let edges = sibling
                    .iter()
                    .filter(|((a, b), _)| scc.contains(a) && scc.contains(b))
                    .map(|((a, b), at)| Edge {
                        from: a.clone(),
                        to: b.clone(),
                        at: at.clone(),
                    })
                    .collect();
                circles.push(Circle {
                    crate_root: root.to_path_buf(),
                    within: show(parent),
                    modules: scc.into_iter().collect(),
                    edges,
                });
            }
        }
    }
    Ok(circles)
}

/// The strongly connected sets of the graph (Tarjan's algorithm).
fn strongly_connected(edges: &BTreeMap<(String, String), String>) -> Vec<BTreeSet<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (a, b) in edges.keys() {
        next.entry(a.as_str()).or_default().push(b.as_str());
        next.entry(b.as_str()).or_default();
    }
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(v: &'a str, next: &BTreeMap<&'a str, Vec<&'a str>>, s: &mut State<'a>) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in next.get(v).map(Vec::as_slice).unwrap_or_default() {
            if !s.index.contains_key(w) {
                visit(w, next, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut scc = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                scc.insert(w.to_owned());
                if w == v {
                    break;
                }
            }
            s.out.push(scc);
        }
    }
    let mut s = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for &v in next.keys() {
        if !s.index.contains_key(v) {
            visit(v, &next, &mut s);
        }
    }
    s.out
}

/// The root files of the crates of the package in `dir`: its library,
/// binaries, tests, benches, examples and fuzz targets.
pub fn crate_roots(dir: &Path) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for f in ["src/lib.rs", "src/main.rs"] {
        let p = dir.join(f);
        if p.is_file() {
            roots.push(p);
        }
    }
    for sub in ["src/bin", "tests", "benches", "examples", "fuzz_targets"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| {
                if p.extension().is_some_and(|e| e == "rs") {
                    Some(p)
                } else {
                    let main = p.join("main.rs");
                    main.is_file().then_some(main)
                }
            })
            .collect();
        found.sort();
        roots.extend(found);
    }
    roots
}

/// The packages below `dir` (folders with a `Cargo.toml` that has a
/// `[package]`), skipping build output, dependencies and hidden folders.
pub fn packages(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut queue = vec![dir.to_path_buf()];
    while let Some(d) = queue.pop() {
        let manifest = d.join("Cargo.toml");
        if manifest.is_file() && std::fs::read_to_string(&manifest)?.contains("[package]") {
            out.push(d.clone());
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.file_type()?.is_dir()
                && !name.starts_with('.')
                && name != "target"
                && name != "node_modules"
            {
                queue.push(e.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The circles in every crate of every package below `dir`; files are
/// named relative to `dir`.
pub fn check_tree(dir: &Path) -> io::Result<Vec<Circle>> {
    let dir = dir.canonicalize()?;
    let relative = |p: &Path| p.strip_prefix(&dir).unwrap_or(p).to_path_buf();
    let mut out = Vec::new();
    for p in packages(&dir)? {
        for root in crate_roots(&p) {
            for mut c in check_crate(&root)? {
                c.crate_root = relative(&c.crate_root);
                for e in &mut c.edges {
                    e.at =
                        e.at.strip_prefix(&format!("{}/", dir.display()))
                            .unwrap_or(&e.at)
                            .to_owned();
                }
                out.push(c);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate written to a fresh folder: `(file, text)` pairs.
    fn write(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("module-cycles-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (f, text) in files {
            let p = dir.join(f);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, text).expect("write");
        }
        dir
    }

    #[test]
    fn three_modules_in_a_circle_are_found() {
        let dir = write(
            "three",
            &[
                ("src/lib.rs", "mod a;\nmod b;\nmod c;\n"),
                ("src/a.rs", "use crate::b::B;\npub struct A;\n"),
                ("src/b.rs", "pub struct B;\nfn f() { crate::c::g(); }\n"),
                ("src/c.rs", "use crate::a::A;\npub fn g() {}\n"),
            ],
        );
        let circles = check_crate(&dir.join("src/lib.rs")).expect("read");
        assert_eq!(circles.len(), 1, "{circles:?}");
        assert_eq!(circles[0].within, "crate");
        assert_eq!(circles[0].modules, ["a", "b", "c"]);
        assert_eq!(circles[0].edges.len(), 3);
        assert!(
            circles[0].edges[0].at.ends_with("src/a.rs:1"),
            "{:?}",
            circles[0].edges
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_modules_and_parents_are_allowed() {
        let dir = write(
            "two",
            &[
                ("src/lib.rs", "mod a;\nmod b;\npub struct Root;\n"),
                (
                    "src/a.rs",
                    "use crate::b::B;\nuse crate::Root;\npub struct A;\n",
                ),
                (
                    "src/b.rs",
                    "use crate::a::A;\npub struct B;\nmod x;\nmod y;\nmod z;\n",
                ),
                (
                    "src/b/x.rs",
                    "use super::B;\nuse super::y::Y;\npub struct X;\n",
                ),
                (
                    "src/b/y.rs",
                    "use super::z::Z;\nuse crate::b::B;\npub struct Y;\n",
                ),
                ("src/b/z.rs", "use super::B;\npub struct Z;\n"),
            ],
        );
        let circles = check_crate(&dir.join("src/lib.rs")).expect("read");
        assert!(circles.is_empty(), "{circles:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_circle_through_a_reexport_and_in_a_subtree_is_found() {
        let dir = write(
            "reexport",
            &[
                ("src/lib.rs", "mod outer;\n"),
                (
                    "src/outer/mod.rs",
                    "mod a;\nmod b;\nmod c;\npub use c::C;\n",
                ),
                ("src/outer/a.rs", "use super::b::B;\npub struct A;\n"),
                // Through the parent's re-export: an edge to `c`, not to `outer`.
                ("src/outer/b.rs", "pub struct B(crate::outer::C);\n"),
                ("src/outer/c.rs", "mod deep;\npub struct C;\n"),
                ("src/outer/c/deep.rs", "use crate::outer::a::A;\n"),
            ],
        );
        let circles = check_crate(&dir.join("src/lib.rs")).expect("read");
        assert_eq!(circles.len(), 1, "{circles:?}");
        assert_eq!(circles[0].within, "crate::outer");
        assert_eq!(circles[0].modules, ["a", "b", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
