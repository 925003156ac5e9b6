//! Word expansion: variables (`$VAR`, `${VAR}`, `$?`, positional
//! parameters), field splitting of unquoted expansions, and globs against
//! the workspace (`*`, `?`, `[...]`; a pattern that matches nothing stays
//! as written, as in bash).

use crate::ast::{Word, WordPart};
use crate::workspace::{EntryKind, WorkspaceFs, WsPath};

/// A character of a field and whether it is a live glob character
/// (unquoted).
type Piece = (char, bool);

/// Where expansion looks things up.
pub trait Lookup {
    /// A variable's value (`?`, `#`, `$` and digits included).
    fn var(&self, name: &str) -> Option<String>;
    /// The positional parameters (`$@`).
    fn args(&self) -> Vec<String>;
}

/// Expands `word` into fields (no globbing).
fn fields(word: &Word, env: &dyn Lookup) -> Vec<Vec<Piece>> {
    let mut out: Vec<Vec<Piece>> = Vec::new();
    let mut cur: Vec<Piece> = Vec::new();
    // A quoted part keeps even an empty field.
    let mut keep = false;
    for part in &word.0 {
        match part {
            WordPart::Text { text, quoted } => {
                keep |= *quoted;
                cur.extend(text.chars().map(|c| (c, !quoted)));
            }
            WordPart::Var { name, quoted: true } if name == "@" => {
                let args = env.args();
                let n = args.len();
                for (i, a) in args.into_iter().enumerate() {
                    cur.extend(a.chars().map(|c| (c, false)));
                    if i + 1 < n {
                        out.push(std::mem::take(&mut cur));
                    }
                }
                keep |= n > 0;
            }
            WordPart::Var { name, quoted } => {
                let value = if name == "@" || name == "*" {
                    env.args().join(" ")
                } else {
                    env.var(name).unwrap_or_default()
                };
                if *quoted {
                    keep = true;
                    cur.extend(value.chars().map(|c| (c, false)));
                    continue;
                }
                let mut words = value.split([' ', '\t', '\n']);
                if let Some(first) = words.next() {
                    cur.extend(first.chars().map(|c| (c, false)));
                }
                for w in words {
                    if !cur.is_empty() || keep {
                        out.push(std::mem::take(&mut cur));
                        keep = false;
                    }
                    cur.extend(w.chars().map(|c| (c, false)));
                }
            }
        }
    }
    if !cur.is_empty() || keep {
        out.push(cur);
    }
    out
}

fn plain(field: &[Piece]) -> String {
    field.iter().map(|(c, _)| *c).collect()
}

/// Expands `word` to a single string (assignments, redirect targets,
/// `case` words): no splitting, no globbing.
pub fn expand_one(word: &Word, env: &dyn Lookup) -> String {
    let mut s = String::new();
    for part in &word.0 {
        match part {
            WordPart::Text { text, .. } => s.push_str(text),
            WordPart::Var { name, .. } if name == "@" || name == "*" => {
                s.push_str(&env.args().join(" "))
            }
            WordPart::Var { name, .. } => s.push_str(&env.var(name).unwrap_or_default()),
        }
    }
    s
}

/// Expands `words` into arguments, globbing unquoted patterns against the
/// workspace from `cwd`.
pub fn expand_words(
    words: &[Word],
    env: &dyn Lookup,
    fs: &mut dyn WorkspaceFs,
    cwd: &WsPath,
    guest_root: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for w in words {
        for field in fields(w, env) {
            if field
                .iter()
                .any(|&(c, live)| live && matches!(c, '*' | '?' | '['))
            {
                let found = glob(&field, fs, cwd, guest_root);
                if found.is_empty() {
                    out.push(plain(&field));
                } else {
                    out.extend(found);
                }
            } else {
                out.push(plain(&field));
            }
        }
    }
    out
}

/// Paths matching `pattern`, sorted, written the way the pattern was.
fn glob(
    pattern: &[Piece],
    fs: &mut dyn WorkspaceFs,
    cwd: &WsPath,
    guest_root: &str,
) -> Vec<String> {
    let absolute = pattern.first().is_some_and(|&(c, _)| c == '/');
    let comps: Vec<&[Piece]> = pattern
        .split(|&(c, _)| c == '/')
        .filter(|c| !c.is_empty())
        .collect();
    // (text as written, where it is)
    let start_text = if absolute {
        "/".to_string()
    } else {
        String::new()
    };
    let start = if absolute {
        WsPath::root()
    } else {
        cwd.clone()
    };
    let mut found = vec![(start_text, start)];
    for (i, comp) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let live = comp.iter().any(|&(c, l)| l && matches!(c, '*' | '?' | '['));
        let mut next = Vec::new();
        for (text, at) in found {
            let join = |name: &str| {
                if text.is_empty() || text.ends_with('/') {
                    format!("{text}{name}")
                } else {
                    format!("{text}/{name}")
                }
            };
            if !live {
                let name = plain(comp);
                let Ok(p) = at.resolve(&name, guest_root) else {
                    continue;
                };
                if last || matches!(fs.kind(&p), Ok(Some(EntryKind::Dir))) {
                    next.push((join(&name), p));
                }
                continue;
            }
            let Ok(entries) = fs.list(&at) else { continue };
            for e in entries {
                let hidden_ok = comp.first().is_some_and(|&(c, _)| c == '.');
                if e.name.starts_with('.') && !hidden_ok {
                    continue;
                }
                if !last && e.kind != EntryKind::Dir && e.kind != EntryKind::Symlink {
                    continue;
                }
                if matches(comp, &e.name.chars().collect::<Vec<_>>()) {
                    next.push((join(&e.name), at.child(&e.name)));
                }
            }
        }
        found = next;
    }
    let mut out: Vec<String> = found
        .into_iter()
        .filter(|(_, p)| matches!(fs.kind(p), Ok(Some(_))))
        .map(|(t, _)| t)
        .collect();
    out.sort();
    out
}

/// Whether `name` matches the glob `pat` (`*`, `?`, `[abc]`, `[a-z]`,
/// `[!x]`; quoted characters match themselves).
pub fn matches(pat: &[Piece], name: &[char]) -> bool {
    match pat.first() {
        None => name.is_empty(),
        Some(&('*', true)) => (0..=name.len()).any(|i| matches(&pat[1..], &name[i..])),
        Some(&('?', true)) => !name.is_empty() && matches(&pat[1..], &name[1..]),
        Some(&('[', true)) => match (class(&pat[1..]), name.first()) {
            (Some((ok, len)), Some(&c)) => ok(c) && matches(&pat[1 + len..], &name[1..]),
            (None, Some(&'[')) => matches(&pat[1..], &name[1..]),
            _ => false,
        },
        Some(&(c, _)) => name.first() == Some(&c) && matches(&pat[1..], &name[1..]),
    }
}

type ClassTest = Box<dyn Fn(char) -> bool>;

/// A bracket expression after `[`: its test and its length up to and
/// including `]`, or `None` when it is not closed.
fn class(pat: &[Piece]) -> Option<(ClassTest, usize)> {
    let mut i = 0;
    let negate = matches!(pat.first(), Some(&('!' | '^', _)));
    if negate {
        i += 1;
    }
    let mut ranges = Vec::new();
    let first = i;
    while i < pat.len() {
        let c = pat[i].0;
        if c == ']' && i > first {
            let test = move |ch: char| ranges.iter().any(|&(a, b)| a <= ch && ch <= b) != negate;
            return Some((Box::new(test), i + 1));
        }
        if pat.get(i + 1).map(|p| p.0) == Some('-') && pat.get(i + 2).is_some_and(|p| p.0 != ']') {
            ranges.push((c, pat[i + 2].0));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Env(HashMap<String, String>, Vec<String>);
    impl Lookup for Env {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).cloned()
        }
        fn args(&self) -> Vec<String> {
            self.1.clone()
        }
    }

    fn env() -> Env {
        let mut m = HashMap::new();
        m.insert("A".into(), "x y".into());
        m.insert("E".into(), String::new());
        m.insert("?".into(), "3".into());
        Env(m, vec!["p 1".into(), "p2".into()])
    }

    fn parse_words(src: &str) -> Vec<Word> {
        crate::lex::tokenize(src)
            .unwrap()
            .into_iter()
            .filter_map(|(t, _)| match t {
                crate::lex::Token::Word(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    fn expand(src: &str, fs: &mut dyn WorkspaceFs) -> Vec<String> {
        expand_words(&parse_words(src), &env(), fs, &WsPath::root(), "/workspace")
    }

    #[test]
    fn variables_split_unless_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = crate::hostfs::HostFs::open(dir.path()).unwrap();
        assert_eq!(
            expand("$A \"$A\" ${A}z $? $E \"$E\"", &mut fs),
            ["x", "y", "x y", "x", "yz", "3", ""]
        );
        assert_eq!(expand("\"$@\"", &mut fs), ["p 1", "p2"]);
        assert_eq!(expand("$@", &mut fs), ["p", "1", "p2"]);
        assert_eq!(expand("'$A' \\$A", &mut fs), ["$A", "$A"]);
    }

    #[test]
    fn globs_match_workspace_files() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "a.rs",
            "b.rs",
            "c.txt",
            ".hidden.rs",
            "src/m.rs",
            "src/n.txt",
        ] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let mut fs = crate::hostfs::HostFs::open(dir.path()).unwrap();
        assert_eq!(expand("*.rs", &mut fs), ["a.rs", "b.rs"]);
        assert_eq!(expand("src/*.rs", &mut fs), ["src/m.rs"]);
        assert_eq!(expand("*/*.txt", &mut fs), ["src/n.txt"]);
        assert_eq!(expand("/[ab].*", &mut fs), ["/a.rs", "/b.rs"]);
        assert_eq!(expand("?.[!r]*", &mut fs), ["c.txt"]);
        assert_eq!(expand("'*.rs' *.none", &mut fs), ["*.rs", "*.none"]);
        assert_eq!(expand(".*.rs", &mut fs), [".hidden.rs"]);
    }

    #[test]
    fn pattern_matching() {
        let m = |p: &str, n: &str| {
            let pat: Vec<Piece> = p.chars().map(|c| (c, true)).collect();
            matches(&pat, &n.chars().collect::<Vec<_>>())
        };
        assert!(m("*", "abc"));
        assert!(m("a*c", "abbbc"));
        assert!(!m("a*c", "abd"));
        assert!(m("[a-c]x", "bx"));
        assert!(!m("[!a-c]x", "bx"));
        assert!(m("[x", "[x"));
    }
}
