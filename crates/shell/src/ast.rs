//! The syntax tree of shell lines and scripts.

/// One piece of a word before expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WordPart {
    /// Text as written; `quoted` text is neither split nor globbed.
    Text { text: String, quoted: bool },
    /// `$NAME`, `${NAME}` or `$?`; `quoted` inside double quotes.
    Var { name: String, quoted: bool },
}

/// A word: its parts, joined after expansion.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word(pub Vec<WordPart>);

impl Word {
    /// The word's text when it is one unquoted literal (keywords, names).
    pub fn literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [WordPart::Text {
                text,
                quoted: false,
            }] => Some(text),
            _ => None,
        }
    }

    /// A word of plain text.
    pub fn text(s: &str) -> Word {
        Word(vec![WordPart::Text {
            text: s.to_string(),
            quoted: false,
        }])
    }
}

/// Where a redirect sends or takes a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `< FILE`
    In(Word),
    /// `> FILE`, `>> FILE` (`append`)
    Out { target: Word, append: bool },
    /// `2> FILE`, `2>> FILE`
    Err { target: Word, append: bool },
    /// `2>&1`
    ErrToOut,
    /// `>&2`, `1>&2`
    OutToErr,
}

/// A simple command: `NAME=value ... word ... redirects`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Simple {
    pub assigns: Vec<(String, Word)>,
    pub words: Vec<Word>,
    pub redirects: Vec<Redirect>,
    /// The line it starts on (1-based).
    pub line: usize,
}

/// A command in a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Simple(Simple),
    If {
        /// `if`/`elif` conditions and their bodies, in order.
        branches: Vec<(List, List)>,
        otherwise: Option<List>,
    },
    For {
        var: String,
        items: Vec<Word>,
        body: List,
    },
    While {
        cond: List,
        body: List,
        /// `until`: loop while the condition fails.
        until: bool,
    },
    /// `{ ...; }`
    Group(List),
    /// `name() { ...; }` or `function name { ...; }`
    Function {
        name: String,
        body: List,
    },
}

/// `cmd | cmd | ...`, optionally negated with `!`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    pub negate: bool,
    pub commands: Vec<Command>,
}

/// How an and-or list goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connector {
    /// `&&`
    And,
    /// `||`
    Or,
}

/// `pipeline && pipeline || ...`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AndOr {
    pub first: Pipeline,
    pub rest: Vec<(Connector, Pipeline)>,
}

/// Statements separated by `;` or newlines.
pub type List = Vec<AndOr>;
