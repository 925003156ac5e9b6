//! Parsing tokens into the syntax tree: and-or lists, pipelines,
//! redirects, `if`/`elif`/`else`, `for`, `while`/`until`, groups and
//! functions. Errors name the line.

use crate::ast::{AndOr, Command, Connector, List, Pipeline, Redirect, Simple, Word};
use crate::error::ParseError;
use crate::lex::{tokenize, Op, Token};

/// Parses a whole script or line.
pub fn parse(src: &str) -> Result<List, ParseError> {
    let tokens = tokenize(src)?;
    let last_line = tokens.last().map(|(_, l)| *l).unwrap_or(1);
    let mut p = Parser {
        tokens,
        pos: 0,
        last_line,
    };
    let list = p.list(&[])?;
    match p.peek() {
        None => Ok(list),
        Some(tok) => {
            let what = describe(tok);
            Err(p.error(format!("unexpected {what}"), false))
        }
    }
}

const RESERVED: &[&str] = &[
    "if", "then", "elif", "else", "fi", "for", "in", "do", "done", "while", "until", "{", "}",
    "function", "!",
];

fn describe(tok: &Token) -> String {
    match tok {
        Token::Word(w) => format!("`{}`", w.literal().unwrap_or("word")),
        Token::Op(Op::Newline) => "end of line".into(),
        Token::Op(op) => format!("`{}`", op_text(*op)),
    }
}

fn op_text(op: Op) -> &'static str {
    match op {
        Op::Pipe => "|",
        Op::AndIf => "&&",
        Op::OrIf => "||",
        Op::Semi => ";",
        Op::Newline => "newline",
        Op::Amp => "&",
        Op::Less => "<",
        Op::Great => ">",
        Op::DGreat => ">>",
        Op::ErrGreat => "2>",
        Op::ErrDGreat => "2>>",
        Op::ErrToOut => "2>&1",
        Op::OutToErr => ">&2",
        Op::LParen => "(",
        Op::RParen => ")",
    }
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    pos: usize,
    last_line: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn line(&self) -> usize {
        self.tokens
            .get(self.pos)
            .map(|(_, l)| *l)
            .unwrap_or(self.last_line)
    }

    fn error(&self, message: String, incomplete: bool) -> ParseError {
        ParseError {
            line: self.line(),
            message,
            incomplete,
        }
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).map(|(t, _)| t.clone());
        self.pos += 1;
        t
    }

    fn peek_keyword(&self) -> Option<&str> {
        match self.peek() {
            Some(Token::Word(w)) => w.literal().filter(|k| RESERVED.contains(k)),
            _ => None,
        }
    }

    fn at_op(&self, op: Op) -> bool {
        self.peek() == Some(&Token::Op(op))
    }

    fn skip_newlines(&mut self) {
        while self.at_op(Op::Newline) {
            self.pos += 1;
        }
    }

    fn skip_separators(&mut self) {
        while self.at_op(Op::Newline) || self.at_op(Op::Semi) {
            self.pos += 1;
        }
    }

    /// Consumes keyword `kw` or fails naming what was found.
    fn expect_keyword(&mut self, kw: &str) -> Result<(), ParseError> {
        self.skip_separators();
        if self.peek_keyword() == Some(kw) {
            self.pos += 1;
            return Ok(());
        }
        match self.peek() {
            None => Err(self.error(format!("missing `{kw}`"), true)),
            Some(t) => {
                let what = describe(t);
                Err(self.error(format!("expected `{kw}`, found {what}"), false))
            }
        }
    }

    /// Statements until one of the keywords `end` (not consumed), `)` or
    /// the end of input.
    fn list(&mut self, end: &[&str]) -> Result<List, ParseError> {
        let mut list = Vec::new();
        loop {
            self.skip_separators();
            match self.peek() {
                None | Some(Token::Op(Op::RParen)) => break,
                _ => {}
            }
            if self.peek_keyword().is_some_and(|k| end.contains(&k)) {
                break;
            }
            list.push(self.and_or()?);
            match self.peek() {
                None | Some(Token::Op(Op::Semi | Op::Newline)) => {}
                Some(Token::Op(Op::Amp)) => return Err(self.error(
                    "background jobs (`&`) are not supported: run the command in its own terminal"
                        .into(),
                    false,
                )),
                Some(Token::Word(w)) if w.literal().is_some_and(|k| end.contains(&k)) => {}
                Some(t) => {
                    let what = describe(t);
                    return Err(self.error(format!("unexpected {what}"), false));
                }
            }
        }
        Ok(list)
    }

    fn and_or(&mut self) -> Result<AndOr, ParseError> {
        let first = self.pipeline()?;
        let mut rest = Vec::new();
        loop {
            let conn = match self.peek() {
                Some(Token::Op(Op::AndIf)) => Connector::And,
                Some(Token::Op(Op::OrIf)) => Connector::Or,
                _ => break,
            };
            self.pos += 1;
            self.skip_newlines();
            rest.push((conn, self.pipeline()?));
        }
        Ok(AndOr { first, rest })
    }

    fn pipeline(&mut self) -> Result<Pipeline, ParseError> {
        let negate = self.peek_keyword() == Some("!");
        if negate {
            self.pos += 1;
        }
        let mut commands = vec![self.command()?];
        while self.at_op(Op::Pipe) {
            self.pos += 1;
            self.skip_newlines();
            commands.push(self.command()?);
        }
        Ok(Pipeline { negate, commands })
    }

    fn command(&mut self) -> Result<Command, ParseError> {
        match self.peek_keyword() {
            Some("if") => return self.if_command(),
            Some("for") => return self.for_command(),
            Some(kw @ ("while" | "until")) => {
                let until = kw == "until";
                self.pos += 1;
                let cond = self.list(&["do"])?;
                self.expect_keyword("do")?;
                let body = self.list(&["done"])?;
                self.expect_keyword("done")?;
                return Ok(Command::While { cond, body, until });
            }
            Some("{") => {
                self.pos += 1;
                return Ok(Command::Group(self.brace_body()?));
            }
            Some("function") => {
                self.pos += 1;
                let name = match self.next() {
                    Some(Token::Word(w)) if w.literal().is_some_and(is_name) => {
                        w.literal().unwrap_or_default().to_string()
                    }
                    _ => return Err(self.error("expected a function name".into(), false)),
                };
                if self.at_op(Op::LParen) {
                    self.expect_parens()?;
                }
                return self.function_body(name);
            }
            Some(kw) if kw != "!" => {
                let kw = kw.to_string();
                return Err(self.error(format!("unexpected `{kw}`"), false));
            }
            _ => {}
        }
        // `name() { ... }`
        if let (Some((Token::Word(w), _)), Some((Token::Op(Op::LParen), _))) =
            (self.tokens.get(self.pos), self.tokens.get(self.pos + 1))
        {
            if let Some(name) = w.literal().filter(|n| is_name(n)) {
                let name = name.to_string();
                self.pos += 1;
                self.expect_parens()?;
                return self.function_body(name);
            }
        }
        self.simple().map(Command::Simple)
    }

    fn expect_parens(&mut self) -> Result<(), ParseError> {
        if self.next() == Some(Token::Op(Op::LParen)) && self.next() == Some(Token::Op(Op::RParen))
        {
            Ok(())
        } else {
            self.pos -= 1;
            Err(self.error("expected `()` after the function name".into(), false))
        }
    }

    fn function_body(&mut self, name: String) -> Result<Command, ParseError> {
        self.skip_newlines();
        if self.peek_keyword() != Some("{") {
            return Err(self.error(
                format!("expected `{{` to start the body of function {name}"),
                self.peek().is_none(),
            ));
        }
        self.pos += 1;
        Ok(Command::Function {
            name,
            body: self.brace_body()?,
        })
    }

    /// After `{`: statements up to and including `}`.
    fn brace_body(&mut self) -> Result<List, ParseError> {
        let body = self.list(&["}"])?;
        self.expect_keyword("}")?;
        Ok(body)
    }

    fn if_command(&mut self) -> Result<Command, ParseError> {
        let mut branches = Vec::new();
        let mut otherwise = None;
        self.pos += 1; // `if`
        loop {
            let cond = self.list(&["then"])?;
            self.expect_keyword("then")?;
            let body = self.list(&["elif", "else", "fi"])?;
            branches.push((cond, body));
            self.skip_separators();
            match self.peek_keyword() {
                Some("elif") => self.pos += 1,
                Some("else") => {
                    self.pos += 1;
                    otherwise = Some(self.list(&["fi"])?);
                    self.expect_keyword("fi")?;
                    break;
                }
                _ => {
                    self.expect_keyword("fi")?;
                    break;
                }
            }
        }
        Ok(Command::If {
            branches,
            otherwise,
        })
    }

    fn for_command(&mut self) -> Result<Command, ParseError> {
        self.pos += 1; // `for`
        let var = match self.next() {
            Some(Token::Word(w)) if w.literal().is_some_and(is_name) => {
                w.literal().unwrap_or_default().to_string()
            }
            None => return Err(self.error("expected a variable name after `for`".into(), true)),
            _ => {
                self.pos -= 1;
                return Err(self.error("expected a variable name after `for`".into(), false));
            }
        };
        let mut items = Vec::new();
        self.skip_newlines();
        if self.peek_keyword() == Some("in") {
            self.pos += 1;
            while let Some(Token::Word(w)) = self.peek() {
                if w.literal() == Some("do") {
                    break;
                }
                items.push(w.clone());
                self.pos += 1;
            }
        } else {
            items.push(Word(vec![crate::ast::WordPart::Var {
                name: "@".into(),
                quoted: true,
            }]));
        }
        self.expect_keyword("do")?;
        let body = self.list(&["done"])?;
        self.expect_keyword("done")?;
        Ok(Command::For { var, items, body })
    }

    fn simple(&mut self) -> Result<Simple, ParseError> {
        let mut cmd = Simple {
            line: self.line(),
            ..Simple::default()
        };
        loop {
            match self.peek().cloned() {
                Some(Token::Word(w)) => {
                    self.pos += 1;
                    if cmd.words.is_empty() {
                        if let Some(assign) = assignment(&w) {
                            cmd.assigns.push(assign);
                            continue;
                        }
                    }
                    cmd.words.push(w);
                }
                Some(Token::Op(op)) => {
                    let redirect = match op {
                        Op::ErrToOut => Redirect::ErrToOut,
                        Op::OutToErr => Redirect::OutToErr,
                        Op::Less | Op::Great | Op::DGreat | Op::ErrGreat | Op::ErrDGreat => {
                            self.pos += 1;
                            let target = match self.peek() {
                                Some(Token::Word(w)) => w.clone(),
                                other => {
                                    let what = other.map(describe).unwrap_or("end of input".into());
                                    return Err(self.error(
                                        format!(
                                            "expected a file after `{}`, found {what}",
                                            op_text(op)
                                        ),
                                        false,
                                    ));
                                }
                            };
                            match op {
                                Op::Less => Redirect::In(target),
                                Op::Great | Op::DGreat => Redirect::Out {
                                    target,
                                    append: op == Op::DGreat,
                                },
                                _ => Redirect::Err {
                                    target,
                                    append: op == Op::ErrDGreat,
                                },
                            }
                        }
                        _ => break,
                    };
                    self.pos += 1;
                    cmd.redirects.push(redirect);
                }
                None => break,
            }
        }
        if cmd.words.is_empty() && cmd.assigns.is_empty() && cmd.redirects.is_empty() {
            return Err(match self.peek() {
                None => self.error("expected a command".into(), true),
                Some(t) => {
                    let what = describe(t);
                    self.error(format!("unexpected {what}"), false)
                }
            });
        }
        Ok(cmd)
    }
}

/// `NAME=value` as an assignment.
fn assignment(w: &Word) -> Option<(String, Word)> {
    let crate::ast::WordPart::Text {
        text,
        quoted: false,
    } = w.0.first()?
    else {
        return None;
    };
    let (name, value) = text.split_once('=')?;
    if !is_name(name) {
        return None;
    }
    let mut parts = Vec::new();
    if !value.is_empty() {
        parts.push(crate::ast::WordPart::Text {
            text: value.to_string(),
            quoted: false,
        });
    }
    parts.extend(w.0[1..].iter().cloned());
    Some((name.to_string(), Word(parts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(c: &Command) -> &Simple {
        match c {
            Command::Simple(s) => s,
            other => panic!("not simple: {other:?}"),
        }
    }

    #[test]
    fn and_or_pipelines_and_redirects() {
        let list = parse("echo hi > a.txt && cat a.txt | tr a-z A-Z || echo no; ls 2>&1").unwrap();
        assert_eq!(list.len(), 2);
        let first = &list[0];
        assert_eq!(first.rest.len(), 2);
        assert_eq!(first.rest[0].0, Connector::And);
        assert_eq!(first.rest[1].0, Connector::Or);
        let echo = simple(&first.first.commands[0]);
        assert_eq!(
            echo.redirects,
            [Redirect::Out {
                target: Word::text("a.txt"),
                append: false
            }]
        );
        assert_eq!(first.rest[0].1.commands.len(), 2);
        assert_eq!(
            simple(&list[1].first.commands[0]).redirects,
            [Redirect::ErrToOut]
        );
    }

    #[test]
    fn assignments_and_keywords_as_arguments() {
        let list = parse("A=1 B=x$Y env\necho if then fi").unwrap();
        let s = simple(&list[0].first.commands[0]);
        assert_eq!(s.assigns.len(), 2);
        assert_eq!(s.assigns[0].0, "A");
        assert_eq!(s.words, [Word::text("env")]);
        assert_eq!(simple(&list[1].first.commands[0]).words.len(), 4);
    }

    #[test]
    fn compound_commands() {
        let src = "set -e\nNAME=x\nf() {\n  echo \"in $1\"\n}\nfor i in a b c; do\n  f $i\ndone\nif false; then echo 1; elif true; then echo 2; else echo 3; fi\nwhile false; do :; done\nfunction g { echo g; }\n";
        let list = parse(src).unwrap();
        assert_eq!(list.len(), 7);
        assert!(
            matches!(&list[2].first.commands[0], Command::Function { name, .. } if name == "f")
        );
        match &list[3].first.commands[0] {
            Command::For { var, items, body } => {
                assert_eq!(var, "i");
                assert_eq!(items.len(), 3);
                assert_eq!(body.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        match &list[4].first.commands[0] {
            Command::If {
                branches,
                otherwise,
            } => {
                assert_eq!(branches.len(), 2);
                assert!(otherwise.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &list[5].first.commands[0],
            Command::While { until: false, .. }
        ));
        assert!(
            matches!(&list[6].first.commands[0], Command::Function { name, .. } if name == "g")
        );
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse("echo a\necho b\nif true; then\n  echo c\nfi fi\n").unwrap_err();
        assert_eq!(e.line, 5, "{e:?}");
        let e = parse("echo a\n| b").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains('|'), "{}", e.message);
        let e = parse("echo >").unwrap_err();
        assert!(e.message.contains("expected a file"), "{}", e.message);
        let e = parse("sleep 1 &").unwrap_err();
        assert!(e.message.contains("background"), "{}", e.message);
    }

    #[test]
    fn unfinished_blocks_are_incomplete() {
        for src in [
            "if true; then",
            "for i in a; do echo",
            "f() {",
            "echo a &&",
            "ls |",
        ] {
            let e = parse(src).unwrap_err();
            assert!(e.incomplete, "{src}: {e:?}");
        }
        assert!(!parse("fi").unwrap_err().incomplete);
    }
}
