//! Just enough of a Rust lexer to find paths: identifiers, `::` and the
//! punctuation of `use` trees and module blocks. Comments, strings,
//! characters, lifetimes and numbers are skipped, so a path in a doc
//! comment or a string is no import.

/// A token of interest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// An identifier or keyword (a raw identifier without its `r#`).
    Ident(String),
    /// `::`
    PathSep,
    /// `{`
    LBrace,
    /// `}`
    RBrace,
    /// `;`
    Semi,
    /// `,`
    Comma,
    /// `*`
    Star,
    /// `(`
    LParen,
    /// `)`
    RParen,
    /// `$` (as in `$crate`, which is no path of this crate's text).
    Dollar,
    /// Any other punctuation.
    Other,
}

/// A token and the line it starts on (from 1).
#[derive(Debug, Clone)]
pub struct Token {
    /// What it is.
    pub tok: Tok,
    /// Where.
    pub line: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The tokens of `src`.
pub fn tokens(src: &str) -> Vec<Token> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut line = 1;
    let n = chars.len();
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    while i < n {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '/' if at(i + 1) == '/' => {
                while i < n && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                let mut depth = 0;
                while i < n {
                    if chars[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if chars[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '"' => i = skip_string(&chars, i + 1, &mut line),
            '\'' => {
                if at(i + 1) == '\\' {
                    // An escaped character literal.
                    i += 2;
                    while i < n && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    i += 3;
                } else {
                    // A lifetime or a label: skip the quote and its name.
                    i += 1;
                    while i < n && is_ident_char(chars[i]) {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() => {
                while i < n
                    && (is_ident_char(chars[i]) || (chars[i] == '.' && at(i + 1).is_ascii_digit()))
                {
                    i += 1;
                }
            }
            c if is_ident_start(c) => {
                // Raw strings and byte strings start like identifiers.
                let mut j = i;
                if chars[j] == 'b' && (at(j + 1) == '"' || at(j + 1) == '\'' || at(j + 1) == 'r') {
                    j += 1;
                }
                if chars[j] == 'r' && (at(j + 1) == '"' || at(j + 1) == '#') {
                    let mut k = j + 1;
                    let mut hashes = 0;
                    while at(k) == '#' {
                        hashes += 1;
                        k += 1;
                    }
                    if at(k) == '"' {
                        i = skip_raw_string(&chars, k + 1, hashes, &mut line);
                        continue;
                    }
                    if hashes == 1 && is_ident_start(at(k)) {
                        // A raw identifier, `r#type`.
                        let start = k;
                        let mut e = k;
                        while e < n && is_ident_char(chars[e]) {
                            e += 1;
                        }
                        out.push(Token {
                            tok: Tok::Ident(chars[start..e].iter().collect()),
                            line,
                        });
                        i = e;
                        continue;
                    }
                }
                if j > i && at(j) == '"' {
                    i = skip_string(&chars, j + 1, &mut line);
                    continue;
                }
                if j > i && at(j) == '\'' {
                    i = j + 1;
                    if at(i) == '\\' {
                        i += 1;
                    }
                    while i < n && chars[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                    continue;
                }
                let start = i;
                while i < n && is_ident_char(chars[i]) {
                    i += 1;
                }
                out.push(Token {
                    tok: Tok::Ident(chars[start..i].iter().collect()),
                    line,
                });
            }
            ':' if at(i + 1) == ':' => {
                out.push(Token {
                    tok: Tok::PathSep,
                    line,
                });
                i += 2;
            }
            _ => {
                let tok = match c {
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    ';' => Tok::Semi,
                    ',' => Tok::Comma,
                    '*' => Tok::Star,
                    '(' => Tok::LParen,
                    ')' => Tok::RParen,
                    '$' => Tok::Dollar,
                    _ => Tok::Other,
                };
                out.push(Token { tok, line });
                i += 1;
            }
        }
    }
    out
}

/// Skips a string body from `i` (after the opening quote); returns the index after its end.
fn skip_string(chars: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            '\n' => {
                *line += 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    i
}

/// Skips a raw string body closed by `"` and `hashes` times `#`.
fn skip_raw_string(chars: &[char], mut i: usize, hashes: usize, line: &mut usize) -> usize {
    while i < chars.len() {
        if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
            return i + 1 + hashes;
        }
        if chars[i] == '\n' {
            *line += 1;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idents(src: &str) -> Vec<String> {
        tokens(src)
            .into_iter()
            .filter_map(|t| match t.tok {
                Tok::Ident(s) => Some(s),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn comments_strings_and_lifetimes_are_no_identifiers() {
        let src = r##"
            // crate::a
            /* crate::b /* nested */ crate::c */
            let s = "crate::d"; let r = r#"crate::e"#; let b = b"x";
            fn f<'a>(x: &'a str) -> char { 'y' }
            let e = '\n'; let q = b'q';
            crate::real
        "##;
        assert_eq!(
            idents(src),
            [
                "let", "s", "let", "r", "let", "b", "fn", "f", "x", "str", "char", "let", "e",
                "let", "q", "crate", "real"
            ]
        );
    }

    #[test]
    fn lines_are_counted() {
        let t = tokens("a\n/* \n */ b\n\"x\ny\" c");
        let lines: Vec<usize> = t.iter().map(|t| t.line).collect();
        assert_eq!(lines, [1, 3, 5]);
    }
}
