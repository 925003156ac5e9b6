//! Splitting shell text into words and operators, with quoting, escapes,
//! comments and line continuation.

use crate::ast::{Word, WordPart};
use crate::error::ParseError;

/// An operator token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Pipe,
    AndIf,
    OrIf,
    Semi,
    Newline,
    Amp,
    /// `<`
    Less,
    /// `>`
    Great,
    /// `>>`
    DGreat,
    /// `2>`
    ErrGreat,
    /// `2>>`
    ErrDGreat,
    /// `2>&1`
    ErrToOut,
    /// `>&2`
    OutToErr,
    LParen,
    RParen,
}

/// A token and the line it is on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Word(Word),
    Op(Op),
}

/// Tokens of `src` with their lines.
pub fn tokenize(src: &str) -> Result<Vec<(Token, usize)>, ParseError> {
    Lexer {
        chars: src.chars().collect(),
        pos: 0,
        line: 1,
        out: Vec::new(),
    }
    .run()
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    out: Vec<(Token, usize)>,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Characters that end an unquoted word.
fn is_break(c: char) -> bool {
    c.is_whitespace() || "|&;<>()".contains(c)
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn op(&mut self, op: Op, len: usize) {
        self.pos += len;
        self.out.push((Token::Op(op), self.line));
    }

    fn run(mut self) -> Result<Vec<(Token, usize)>, ParseError> {
        while let Some(c) = self.peek(0) {
            match c {
                ' ' | '\t' | '\r' => self.pos += 1,
                '\\' if self.peek(1) == Some('\n') => {
                    self.pos += 2;
                    self.line += 1;
                }
                '\n' => {
                    self.op(Op::Newline, 1);
                    self.line += 1;
                }
                '#' => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.pos += 1;
                    }
                }
                '|' if self.peek(1) == Some('|') => self.op(Op::OrIf, 2),
                '|' => self.op(Op::Pipe, 1),
                '&' if self.peek(1) == Some('&') => self.op(Op::AndIf, 2),
                '&' => self.op(Op::Amp, 1),
                ';' => self.op(Op::Semi, 1),
                '(' => self.op(Op::LParen, 1),
                ')' => self.op(Op::RParen, 1),
                '<' => self.op(Op::Less, 1),
                '>' => self.great(0),
                '2' | '1' if self.peek(1) == Some('>') => {
                    if c == '2' {
                        self.err_great();
                    } else {
                        self.great(1);
                    }
                }
                _ => self.word()?,
            }
        }
        Ok(self.out)
    }

    /// `>`, `>>`, `>&2` after `skip` characters (`1>`).
    fn great(&mut self, skip: usize) {
        let at = |l: &Lexer, i: usize| l.peek(skip + i);
        if at(self, 1) == Some('>') {
            self.op(Op::DGreat, skip + 2);
        } else if at(self, 1) == Some('&') && at(self, 2) == Some('2') {
            self.op(Op::OutToErr, skip + 3);
        } else {
            self.op(Op::Great, skip + 1);
        }
    }

    /// `2>`, `2>>`, `2>&1`.
    fn err_great(&mut self) {
        if self.peek(2) == Some('>') {
            self.op(Op::ErrDGreat, 3);
        } else if self.peek(2) == Some('&') && self.peek(3) == Some('1') {
            self.op(Op::ErrToOut, 4);
        } else {
            self.op(Op::ErrGreat, 2);
        }
    }

    fn unterminated(&self, what: &str, line: usize) -> ParseError {
        ParseError {
            line,
            message: format!("unterminated {what}"),
            incomplete: true,
        }
    }

    fn word(&mut self) -> Result<(), ParseError> {
        let start_line = self.line;
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut quoted_text = String::new();
        // Flushes pending literal text as parts, unquoted then quoted.
        fn flush(parts: &mut Vec<WordPart>, text: &mut String, quoted: bool) {
            if !text.is_empty() {
                parts.push(WordPart::Text {
                    text: std::mem::take(text),
                    quoted,
                });
            }
        }
        while let Some(c) = self.peek(0) {
            if is_break(c) {
                break;
            }
            match c {
                '\\' => {
                    flush(&mut parts, &mut text, false);
                    match self.peek(1) {
                        Some('\n') => {
                            self.pos += 2;
                            self.line += 1;
                        }
                        Some(e) => {
                            quoted_text.push(e);
                            flush(&mut parts, &mut quoted_text, true);
                            self.pos += 2;
                        }
                        None => {
                            return Err(self.unterminated("escape", self.line));
                        }
                    }
                }
                '\'' => {
                    flush(&mut parts, &mut text, false);
                    self.pos += 1;
                    let line = self.line;
                    loop {
                        match self.peek(0) {
                            None => return Err(self.unterminated("single quote", line)),
                            Some('\'') => break,
                            Some(ch) => {
                                if ch == '\n' {
                                    self.line += 1;
                                }
                                quoted_text.push(ch);
                                self.pos += 1;
                            }
                        }
                    }
                    self.pos += 1;
                    // '' is an empty word, not nothing.
                    parts.push(WordPart::Text {
                        text: std::mem::take(&mut quoted_text),
                        quoted: true,
                    });
                }
                '"' => {
                    flush(&mut parts, &mut text, false);
                    self.pos += 1;
                    self.double_quoted(&mut parts)?;
                }
                '$' => {
                    if let Some(var) = self.var(false)? {
                        flush(&mut parts, &mut text, false);
                        parts.push(var);
                    } else {
                        text.push('$');
                        self.pos += 1;
                    }
                }
                _ => {
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
        flush(&mut parts, &mut text, false);
        self.out.push((Token::Word(Word(parts)), start_line));
        Ok(())
    }

    /// The inside of `"..."` (the opening quote consumed).
    fn double_quoted(&mut self, parts: &mut Vec<WordPart>) -> Result<(), ParseError> {
        let line = self.line;
        let mut text = String::new();
        let mut any = false;
        loop {
            match self.peek(0) {
                None => return Err(self.unterminated("double quote", line)),
                Some('"') => {
                    self.pos += 1;
                    break;
                }
                Some('\\') => match self.peek(1) {
                    Some('\n') => {
                        self.pos += 2;
                        self.line += 1;
                    }
                    Some(e @ ('$' | '`' | '"' | '\\')) => {
                        text.push(e);
                        self.pos += 2;
                    }
                    _ => {
                        text.push('\\');
                        self.pos += 1;
                    }
                },
                Some('$') => {
                    if let Some(var) = self.var(true)? {
                        if !text.is_empty() {
                            parts.push(WordPart::Text {
                                text: std::mem::take(&mut text),
                                quoted: true,
                            });
                        }
                        parts.push(var);
                        any = true;
                    } else {
                        text.push('$');
                        self.pos += 1;
                    }
                }
                Some(ch) => {
                    if ch == '\n' {
                        self.line += 1;
                    }
                    text.push(ch);
                    self.pos += 1;
                }
            }
        }
        if !text.is_empty() || !any {
            parts.push(WordPart::Text { text, quoted: true });
        }
        Ok(())
    }

    /// `$NAME`, `${NAME}`, `$?`, `$#`, `$@`, `$*`, `$$`, `$0`..`$9` at the
    /// cursor (consumed), or `None` for a lone `$`.
    fn var(&mut self, quoted: bool) -> Result<Option<WordPart>, ParseError> {
        let var = |name: String| Some(WordPart::Var { name, quoted });
        match self.peek(1) {
            Some(c @ ('?' | '#' | '@' | '*' | '$')) => {
                self.pos += 2;
                Ok(var(c.to_string()))
            }
            Some(c) if c.is_ascii_digit() => {
                self.pos += 2;
                Ok(var(c.to_string()))
            }
            Some(c) if is_name_start(c) => {
                self.pos += 1;
                let mut name = String::new();
                while let Some(c) = self.peek(0).filter(|c| is_name_char(*c)) {
                    name.push(c);
                    self.pos += 1;
                }
                Ok(var(name))
            }
            Some('{') => {
                let line = self.line;
                let mut name = String::new();
                let mut i = 2;
                loop {
                    match self.peek(i) {
                        None => return Err(self.unterminated("${", line)),
                        Some('}') => break,
                        Some(c) => name.push(c),
                    }
                    i += 1;
                }
                let valid = name == "?"
                    || name.chars().all(|c| c.is_ascii_digit()) && !name.is_empty()
                    || name.chars().next().is_some_and(is_name_start)
                        && name.chars().all(is_name_char);
                if !valid {
                    return Err(ParseError {
                        line,
                        message: format!("bad substitution ${{{name}}}"),
                        incomplete: false,
                    });
                }
                self.pos += i + 1;
                Ok(var(name))
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(src: &str) -> Vec<Token> {
        tokenize(src).unwrap().into_iter().map(|(t, _)| t).collect()
    }

    fn lit(s: &str, quoted: bool) -> WordPart {
        WordPart::Text {
            text: s.into(),
            quoted,
        }
    }

    #[test]
    fn quotes_escapes_and_variables() {
        let toks = words(r#"echo 'a b' "c $X d" e\ f ${Y}z $? $"#);
        assert_eq!(toks[0], Token::Word(Word::text("echo")));
        assert_eq!(toks[1], Token::Word(Word(vec![lit("a b", true)])));
        assert_eq!(
            toks[2],
            Token::Word(Word(vec![
                lit("c ", true),
                WordPart::Var {
                    name: "X".into(),
                    quoted: true
                },
                lit(" d", true)
            ]))
        );
        assert_eq!(
            toks[3],
            Token::Word(Word(vec![lit("e", false), lit(" ", true), lit("f", false)]))
        );
        assert_eq!(
            toks[4],
            Token::Word(Word(vec![
                WordPart::Var {
                    name: "Y".into(),
                    quoted: false
                },
                lit("z", false)
            ]))
        );
        assert_eq!(
            toks[5],
            Token::Word(Word(vec![WordPart::Var {
                name: "?".into(),
                quoted: false
            }]))
        );
        assert_eq!(toks[6], Token::Word(Word::text("$")));
    }

    #[test]
    fn operators_and_redirects() {
        let toks = words("a|b||c&&d;e >f >>g <h 2>i 2>>j 2>&1 >&2 1>k");
        let ops: Vec<Op> = toks
            .iter()
            .filter_map(|t| match t {
                Token::Op(o) => Some(*o),
                _ => None,
            })
            .collect();
        assert_eq!(
            ops,
            [
                Op::Pipe,
                Op::OrIf,
                Op::AndIf,
                Op::Semi,
                Op::Great,
                Op::DGreat,
                Op::Less,
                Op::ErrGreat,
                Op::ErrDGreat,
                Op::ErrToOut,
                Op::OutToErr,
                Op::Great
            ]
        );
        // A 2 inside a word is text.
        assert_eq!(words("a2>b")[0], Token::Word(Word::text("a2")));
    }

    #[test]
    fn comments_continuations_and_lines() {
        let toks = tokenize("echo a \\\n  b # note\nls\n").unwrap();
        let lines: Vec<usize> = toks.iter().map(|(_, l)| *l).collect();
        assert_eq!(toks[2].0, Token::Word(Word::text("b")));
        assert_eq!(toks[3].0, Token::Op(Op::Newline));
        assert_eq!(toks[4].0, Token::Word(Word::text("ls")));
        assert_eq!(lines[4], 3);
    }

    #[test]
    fn unterminated_quotes_are_incomplete() {
        let e = tokenize("echo ok\necho 'abc").unwrap_err();
        assert!(e.incomplete);
        assert_eq!(e.line, 2);
        assert!(e.message.contains("single quote"));
        assert!(tokenize("echo \"x").unwrap_err().incomplete);
        assert!(!tokenize("echo ${a-b}").unwrap_err().incomplete);
    }

    #[test]
    fn empty_quotes_make_an_empty_word() {
        assert_eq!(words("''")[0], Token::Word(Word(vec![lit("", true)])));
        assert_eq!(words("\"\"")[0], Token::Word(Word(vec![lit("", true)])));
    }
}
