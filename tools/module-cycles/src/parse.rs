//! What one source file declares and refers to: its file modules (`mod x;`),
//! its `use` items (public ones re-export) and every path that starts
//! with `crate`, `super` or `self`.

use crate::lex::{Tok, Token, tokens};

/// `mod name;` inside the inline modules `scope` of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModDecl {
    /// The inline modules around the declaration (usually none).
    pub scope: Vec<String>,
    /// The module's name.
    pub name: String,
}

/// One leaf of a `use` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseItem {
    /// The inline modules around the item.
    pub scope: Vec<String>,
    /// The path as written (`crate`, `super`, `self` or a name first).
    pub path: Vec<String>,
    /// The name it brings in (`None` for a glob).
    pub name: Option<String>,
    /// `pub use` (of any visibility but private): a re-export.
    pub public: bool,
    /// Where.
    pub line: usize,
}

/// A path in code (outside `use`) that starts with `crate`, `super` or `self`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRef {
    /// The inline modules around it.
    pub scope: Vec<String>,
    /// The path as written.
    pub path: Vec<String>,
    /// Where.
    pub line: usize,
}

/// What a file holds.
#[derive(Debug, Default)]
pub struct Parsed {
    /// File modules declared.
    pub mods: Vec<ModDecl>,
    /// `use` leaves.
    pub uses: Vec<UseItem>,
    /// Other paths.
    pub paths: Vec<PathRef>,
}

fn ident(t: Option<&Token>) -> Option<&str> {
    match t.map(|t| &t.tok) {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

fn is(t: Option<&Token>, tok: &Tok) -> bool {
    t.is_some_and(|t| &t.tok == tok)
}

/// Parses a file's text.
pub fn parse(src: &str) -> Parsed {
    let toks = tokens(src);
    let mut out = Parsed::default();
    // Inline modules open around the current token: name and the brace
    // depth inside them.
    let mut stack: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    let scope =
        |stack: &Vec<(String, usize)>| stack.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    while i < toks.len() {
        match &toks[i].tok {
            Tok::LBrace => {
                depth += 1;
                i += 1;
            }
            Tok::RBrace => {
                if stack.last().is_some_and(|(_, d)| *d == depth) {
                    stack.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            Tok::Dollar => {
                // `$crate::...` in a macro: skip the whole path.
                i += 1;
                while ident(toks.get(i)).is_some() || is(toks.get(i), &Tok::PathSep) {
                    i += 1;
                }
            }
            Tok::Ident(kw) if kw == "mod" && !is(toks.get(i.wrapping_sub(1)), &Tok::PathSep) => {
                let Some(name) = ident(toks.get(i + 1)) else {
                    i += 1;
                    continue;
                };
                let name = name.to_owned();
                if is(toks.get(i + 2), &Tok::Semi) {
                    out.mods.push(ModDecl {
                        scope: scope(&stack),
                        name,
                    });
                    i += 3;
                } else if is(toks.get(i + 2), &Tok::LBrace) {
                    depth += 1;
                    stack.push((name, depth));
                    i += 3;
                } else {
                    i += 1;
                }
            }
            Tok::Ident(kw) if kw == "use" && !is(toks.get(i.wrapping_sub(1)), &Tok::PathSep) => {
                let public = is_public(&toks, i);
                let line = toks[i].line;
                let mut j = i + 1;
                if is(toks.get(j), &Tok::PathSep) {
                    j += 1;
                }
                let mut leaves = Vec::new();
                j = use_tree(&toks, j, &mut Vec::new(), &mut leaves);
                for (path, name) in leaves {
                    out.uses.push(UseItem {
                        scope: scope(&stack),
                        path,
                        name,
                        public,
                        line,
                    });
                }
                // To the end of the item.
                while j < toks.len() && !is(toks.get(j), &Tok::Semi) {
                    j += 1;
                }
                i = j + 1;
            }
            Tok::Ident(first)
                if matches!(first.as_str(), "crate" | "super" | "self")
                    && is(toks.get(i + 1), &Tok::PathSep)
                    && !is(toks.get(i.wrapping_sub(1)), &Tok::PathSep) =>
            {
                let line = toks[i].line;
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while is(toks.get(j), &Tok::PathSep) {
                    match ident(toks.get(j + 1)) {
                        Some(s) => {
                            path.push(s.to_owned());
                            j += 2;
                        }
                        None => break,
                    }
                }
                out.paths.push(PathRef {
                    scope: scope(&stack),
                    path,
                    line,
                });
                i = j;
            }
            _ => i += 1,
        }
    }
    out
}

/// Whether the `use` at `i` is public: `pub use`, `pub(crate) use`, ...
fn is_public(toks: &[Token], i: usize) -> bool {
    let Some(prev) = i.checked_sub(1).and_then(|k| toks.get(k)) else {
        return false;
    };
    match &prev.tok {
        Tok::Ident(s) => s == "pub",
        Tok::RParen => {
            // Back to the matching `(`, then `pub`.
            let mut k = i - 1;
            while k > 0 && toks[k].tok != Tok::LParen {
                k -= 1;
            }
            k > 0 && ident(toks.get(k - 1)) == Some("pub")
        }
        _ => false,
    }
}

/// Parses a use tree from `i` under `prefix`; pushes `(path, name)` leaves
/// (`name` `None` for a glob). Returns the index after the tree.
fn use_tree(
    toks: &[Token],
    mut i: usize,
    prefix: &mut Vec<String>,
    leaves: &mut Vec<(Vec<String>, Option<String>)>,
) -> usize {
    let base = prefix.len();
    loop {
        match toks.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(s)) => {
                let s = s.clone();
                if is(toks.get(i + 1), &Tok::PathSep) {
                    prefix.push(s);
                    i += 2;
                    continue;
                }
                // A leaf, perhaps renamed.
                let mut name = s.clone();
                let mut path = prefix.clone();
                i += 1;
                if ident(toks.get(i)) == Some("as")
                    && let Some(alias) = ident(toks.get(i + 1))
                {
                    name = alias.to_owned();
                    i += 2;
                }
                if s == "self" {
                    if name == "self" {
                        name = path.last().cloned().unwrap_or_default();
                    }
                } else {
                    path.push(s);
                }
                leaves.push((path, Some(name)));
                break;
            }
            Some(Tok::Star) => {
                leaves.push((prefix.clone(), None));
                i += 1;
                break;
            }
            Some(Tok::LBrace) => {
                i += 1;
                loop {
                    match toks.get(i).map(|t| &t.tok) {
                        Some(Tok::RBrace) => {
                            i += 1;
                            break;
                        }
                        Some(Tok::Comma) => i += 1,
                        None => break,
                        _ => {
                            let mut inner = prefix.clone();
                            let next = use_tree(toks, i, &mut inner, leaves);
                            if next == i {
                                i += 1;
                            } else {
                                i = next;
                            }
                        }
                    }
                }
                break;
            }
            _ => break,
        }
    }
    prefix.truncate(base);
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn use_trees_are_expanded() {
        let p = parse(
            "pub(crate) use crate::a::{b::{C, self}, d as e, *};\nuse super::X;\nuse std::io;",
        );
        let leaves: Vec<(Vec<String>, Option<String>, bool)> = p
            .uses
            .iter()
            .map(|u| (u.path.clone(), u.name.clone(), u.public))
            .collect();
        assert_eq!(
            leaves,
            vec![
                (s(&["crate", "a", "b", "C"]), Some("C".into()), true),
                (s(&["crate", "a", "b"]), Some("b".into()), true),
                (s(&["crate", "a", "d"]), Some("e".into()), true),
                (s(&["crate", "a"]), None, true),
                (s(&["super", "X"]), Some("X".into()), false),
                (s(&["std", "io"]), Some("io".into()), false),
            ]
        );
    }

    #[test]
    fn modules_and_paths_are_found_with_their_scope() {
        let p = parse(
            "mod a;\n#[cfg(test)]\nmod tests {\n    use super::*;\n    fn f() { crate::b::g::<u8>(); $crate::no; }\n    mod inner;\n}\nfn h() { self::a::x(); }",
        );
        assert_eq!(
            p.mods,
            vec![
                ModDecl {
                    scope: vec![],
                    name: "a".into()
                },
                ModDecl {
                    scope: s(&["tests"]),
                    name: "inner".into()
                },
            ]
        );
        let paths: Vec<(Vec<String>, Vec<String>, usize)> = p
            .paths
            .iter()
            .map(|r| (r.scope.clone(), r.path.clone(), r.line))
            .collect();
        assert_eq!(
            paths,
            vec![
                (s(&["tests"]), s(&["crate", "b", "g"]), 5),
                (vec![], s(&["self", "a", "x"]), 8),
            ]
        );
        assert_eq!(p.uses[0].scope, s(&["tests"]));
    }
}
