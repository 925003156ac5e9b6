//! Running the syntax tree: and-or lists, pipelines that mix builtins and
//! programs, redirects, compound commands, functions and `set -e`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::ast::{AndOr, Command, Connector, List, Pipeline, Redirect, Simple};
use crate::backend::{Backend, GuestCommand, GuestStdin};
use crate::expand::{expand_one, expand_words, Lookup};
use crate::io::{Io, Sink};
use crate::parse::parse;
use crate::workspace::WsPath;

/// How a statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Next,
    /// `exit N`, or a failure under `set -e`.
    Exit(i32),
    /// `return N` from a function.
    Return(i32),
    Break(u32),
    Continue(u32),
    /// Ctrl-C: the line is abandoned.
    Interrupted,
}

/// Exit code of a line cut short by Ctrl-C.
pub const INTERRUPTED: i32 = 130;

/// The shell's state: variables, functions, the working directory and the
/// back end that runs programs.
pub struct Shell {
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) vars: BTreeMap<String, String>,
    pub(crate) exported: BTreeSet<String>,
    funcs: HashMap<String, Rc<List>>,
    pub(crate) args: Vec<String>,
    pub(crate) cwd: WsPath,
    pub(crate) status: i32,
    pub(crate) errexit: bool,
    /// The shell's stdin is a terminal: programs get one too.
    pub(crate) tty: bool,
    /// Per-program timeout.
    pub(crate) timeout_ms: Option<u64>,
    /// Counts Ctrl-C presses (shared with the signal handler).
    interrupts: Arc<AtomicUsize>,
    seen_interrupts: usize,
    depth: usize,
}

impl std::fmt::Debug for Shell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shell")
            .field("backend", &self.backend.name())
            .field("cwd", &self.cwd)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Lookup for Shell {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "?" => Some(self.status.to_string()),
            "#" => Some(self.args.len().to_string()),
            "$" => Some(std::process::id().to_string()),
            "0" => Some("nook-shell".into()),
            "PWD" => Some(self.cwd.in_guest(self.backend.guest_root())),
            n if n.bytes().all(|b| b.is_ascii_digit()) => n
                .parse::<usize>()
                .ok()
                .and_then(|i| self.args.get(i.checked_sub(1)?).cloned()),
            n => self.vars.get(n).cloned(),
        }
    }
    fn args(&self) -> Vec<String> {
        self.args.clone()
    }
}

/// Most nested function calls and `source`s.
const MAX_DEPTH: usize = 200;

fn is_builtin(name: &str) -> bool {
    crate::builtins::BUILTINS.iter().any(|(b, _)| *b == name)
}

impl Shell {
    /// A shell on `backend`, at the workspace root. `interrupts` counts
    /// Ctrl-C presses (see [`crate::signals`]).
    pub fn new(backend: Box<dyn Backend>, interrupts: Arc<AtomicUsize>) -> Shell {
        let seen = interrupts.load(Ordering::Relaxed);
        Shell {
            backend,
            vars: BTreeMap::new(),
            exported: BTreeSet::new(),
            funcs: HashMap::new(),
            args: Vec::new(),
            cwd: WsPath::root(),
            status: 0,
            errexit: false,
            tty: false,
            timeout_ms: None,
            interrupts,
            seen_interrupts: seen,
            depth: 0,
        }
    }

    /// The working directory.
    pub fn cwd(&self) -> &WsPath {
        &self.cwd
    }

    /// The last exit status.
    pub fn status(&self) -> i32 {
        self.status
    }

    pub fn set_status(&mut self, status: i32) {
        self.status = status;
    }

    /// The names of the functions defined so far.
    pub fn functions(&self) -> Vec<String> {
        self.funcs.keys().cloned().collect()
    }

    pub fn backend(&mut self) -> &mut dyn Backend {
        self.backend.as_mut()
    }

    /// Sets and exports a variable.
    pub fn export(&mut self, name: &str, value: &str) {
        self.vars.insert(name.to_string(), value.to_string());
        self.exported.insert(name.to_string());
    }

    /// The exported variables.
    pub fn exported_vars(&self) -> Vec<(String, String)> {
        self.exported
            .iter()
            .filter_map(|k| self.vars.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// Whether Ctrl-C was pressed since the last check.
    fn interrupted(&mut self) -> bool {
        let now = self.interrupts.load(Ordering::Relaxed);
        let hit = now != self.seen_interrupts;
        self.seen_interrupts = now;
        hit
    }

    /// Forgets Ctrl-C presses so far (before a new line).
    pub fn clear_interrupts(&mut self) {
        self.seen_interrupts = self.interrupts.load(Ordering::Relaxed);
    }

    /// Parses and runs `src` on the shell's own streams.
    pub fn run_source(&mut self, src: &str) -> Result<Flow, crate::error::ParseError> {
        let list = parse(src)?;
        Ok(self.run_list(&list, &Io::shell(), false))
    }

    pub(crate) fn run_list(&mut self, list: &List, io: &Io, cond: bool) -> Flow {
        for ao in list {
            let flow = self.run_and_or(ao, io, cond);
            if flow != Flow::Next {
                return flow;
            }
        }
        Flow::Next
    }

    fn run_and_or(&mut self, ao: &AndOr, io: &Io, cond: bool) -> Flow {
        let n = ao.rest.len();
        let mut flow = self.run_pipeline(&ao.first, io, cond || n > 0);
        for (i, (conn, p)) in ao.rest.iter().enumerate() {
            if flow != Flow::Next {
                return flow;
            }
            let run = match conn {
                Connector::And => self.status == 0,
                Connector::Or => self.status != 0,
            };
            if run {
                flow = self.run_pipeline(p, io, cond || i + 1 < n);
            }
        }
        flow
    }

    fn run_pipeline(&mut self, p: &Pipeline, io: &Io, cond: bool) -> Flow {
        if self.interrupted() {
            self.status = INTERRUPTED;
            return Flow::Interrupted;
        }
        let flow = if p.commands.len() == 1 {
            self.run_command(&p.commands[0], io, cond || p.negate)
        } else {
            self.run_stages(&p.commands, io)
        };
        if p.negate {
            self.status = i32::from(self.status == 0);
        }
        if flow != Flow::Next {
            return flow;
        }
        if self.interrupted() || self.status == INTERRUPTED && io.stdin.is_none() {
            self.clear_interrupts();
            return Flow::Interrupted;
        }
        if self.errexit && !cond && !p.negate && self.status != 0 {
            return Flow::Exit(self.status);
        }
        Flow::Next
    }

    /// A pipeline of several commands: each stage's output feeds the next
    /// one's input; consecutive programs run as one pipeline in the guest
    /// so they stream into each other.
    fn run_stages(&mut self, commands: &[Command], io: &Io) -> Flow {
        let mut stages: Vec<Result<Vec<Vec<String>>, &Command>> = Vec::new();
        for c in commands {
            match self.plain_program(c) {
                Some(argv) => match stages.last_mut() {
                    Some(Ok(group)) => group.push(argv),
                    _ => stages.push(Ok(vec![argv])),
                },
                None => stages.push(Err(c)),
            }
        }
        let mut stdin = io.stdin.clone();
        let n = stages.len();
        let mut flow = Flow::Next;
        for (i, stage) in stages.into_iter().enumerate() {
            let last = i + 1 == n;
            let stdout = if last {
                io.stdout.clone()
            } else {
                Sink::buffer()
            };
            let stage_io = Io {
                stdin: stdin.take(),
                stdout: stdout.clone(),
                stderr: io.stderr.clone(),
            };
            flow = match stage {
                Ok(group) if group.len() == 1 => {
                    let argv = group.into_iter().next().unwrap_or_default();
                    self.run_program(argv, Vec::new(), &stage_io)
                }
                Ok(group) => {
                    let line = group
                        .iter()
                        .map(|argv| crate::backend::sh_quote(argv))
                        .collect::<Vec<_>>()
                        .join(" | ");
                    let argv = vec!["sh".into(), "-c".into(), line];
                    self.run_program(argv, Vec::new(), &stage_io)
                }
                Err(cmd) => self.run_command(cmd, &stage_io, true),
            };
            if !last {
                stdin = Some(Rc::new(stdout.take()));
                if matches!(flow, Flow::Interrupted) {
                    return flow;
                }
                flow = Flow::Next;
            }
        }
        flow
    }

    /// `argv` when `c` is a simple command that runs a program with no
    /// redirects or assignments of its own.
    fn plain_program(&mut self, c: &Command) -> Option<Vec<String>> {
        let Command::Simple(s) = c else { return None };
        if !s.redirects.is_empty() || !s.assigns.is_empty() {
            return None;
        }
        let argv = self.expand(&s.words);
        let name = argv.first()?;
        (!is_builtin(name) && !self.funcs.contains_key(name)).then_some(argv)
    }

    fn expand(&mut self, words: &[crate::ast::Word]) -> Vec<String> {
        let guest_root = self.backend.guest_root().to_string();
        let cwd = self.cwd.clone();
        // Split borrows: the lookup reads the shell, the glob reads files.
        let snapshot = VarSnapshot::of(self);
        expand_words(words, &snapshot, self.backend.fs(), &cwd, &guest_root)
    }

    pub(crate) fn run_command(&mut self, c: &Command, io: &Io, cond: bool) -> Flow {
        match c {
            Command::Simple(s) => self.run_simple(s, io),
            Command::If {
                branches,
                otherwise,
            } => {
                for (test, body) in branches {
                    let flow = self.run_list(test, io, true);
                    if flow != Flow::Next {
                        return flow;
                    }
                    if self.status == 0 {
                        return self.run_list(body, io, cond);
                    }
                }
                match otherwise {
                    Some(body) => self.run_list(body, io, cond),
                    None => {
                        self.status = 0;
                        Flow::Next
                    }
                }
            }
            Command::For { var, items, body } => {
                let values = self.expand(items);
                self.status = 0;
                for v in values {
                    self.vars.insert(var.clone(), v);
                    match self.run_list(body, io, cond) {
                        Flow::Next | Flow::Continue(1) => {}
                        Flow::Break(1) => break,
                        Flow::Break(n) => return Flow::Break(n - 1),
                        Flow::Continue(n) => return Flow::Continue(n - 1),
                        other => return other,
                    }
                }
                Flow::Next
            }
            Command::While {
                cond: test,
                body,
                until,
            } => {
                let mut status = 0;
                loop {
                    let flow = self.run_list(test, io, true);
                    if flow != Flow::Next {
                        return flow;
                    }
                    if (self.status == 0) == *until {
                        break;
                    }
                    match self.run_list(body, io, cond) {
                        Flow::Next | Flow::Continue(1) => {}
                        Flow::Break(1) => break,
                        Flow::Break(n) => return Flow::Break(n - 1),
                        Flow::Continue(n) => return Flow::Continue(n - 1),
                        other => return other,
                    }
                    status = self.status;
                }
                self.status = status;
                Flow::Next
            }
            Command::Group(list) => self.run_list(list, io, cond),
            Command::Function { name, body } => {
                self.funcs.insert(name.clone(), Rc::new(body.clone()));
                self.status = 0;
                Flow::Next
            }
        }
    }

    fn run_simple(&mut self, s: &Simple, io: &Io) -> Flow {
        let (io, outputs) = match self.redirect(&s.redirects, io) {
            Ok(r) => r,
            Err(message) => {
                io.stderr.put(format!("nook shell: {message}\n").as_bytes());
                self.status = 1;
                return Flow::Next;
            }
        };
        let argv = self.expand(&s.words);
        let snapshot = VarSnapshot::of(self);
        let assigns: Vec<(String, String)> = s
            .assigns
            .iter()
            .map(|(k, w)| (k.clone(), expand_one(w, &snapshot)))
            .collect();
        let flow = match argv.first().map(String::as_str) {
            None => {
                self.vars.extend(assigns);
                self.status = 0;
                Flow::Next
            }
            Some("command") if argv.len() > 1 => self.run_program(argv[1..].to_vec(), assigns, &io),
            Some(name) if self.funcs.contains_key(name) => {
                self.vars.extend(assigns);
                self.call_function(name, argv[1..].to_vec(), &io)
            }
            Some(name) if is_builtin(name) => {
                self.vars.extend(assigns);
                self.builtin(&argv, &io)
            }
            Some(_) => self.run_program(argv, assigns, &io),
        };
        for (path, append, sink) in outputs {
            let data = sink.take();
            if let Err(e) = self.backend.fs().write(&path, &data, append) {
                io.stderr
                    .put(format!("nook shell: {}: {e}\n", path.display()).as_bytes());
                self.status = 1;
            }
        }
        flow
    }

    fn call_function(&mut self, name: &str, args: Vec<String>, io: &Io) -> Flow {
        match self.funcs.get(name).cloned() {
            Some(body) => self.nested(&body, name, Some(args), io),
            None => Flow::Next,
        }
    }

    /// Runs a function body or a sourced file: nested at most
    /// [`MAX_DEPTH`] deep, with its own positional arguments when given,
    /// `return N` ending it with status N.
    fn nested(&mut self, list: &List, name: &str, args: Option<Vec<String>>, io: &Io) -> Flow {
        if self.depth >= MAX_DEPTH {
            io.stderr
                .put(format!("nook shell: {name}: nested too deep\n").as_bytes());
            self.status = 1;
            return Flow::Next;
        }
        let saved = args.map(|a| std::mem::replace(&mut self.args, a));
        self.depth += 1;
        let flow = self.run_list(list, io, false);
        self.depth -= 1;
        if let Some(saved) = saved {
            self.args = saved;
        }
        match flow {
            Flow::Return(n) => {
                self.status = n;
                Flow::Next
            }
            other => other,
        }
    }

    /// Applies `redirects` to `io`; returns the new streams and the files
    /// to write once the command is done.
    #[allow(clippy::type_complexity)]
    fn redirect(
        &mut self,
        redirects: &[Redirect],
        io: &Io,
    ) -> Result<(Io, Vec<(WsPath, bool, Sink)>), String> {
        let mut io = io.clone();
        let mut outputs = Vec::new();
        for r in redirects {
            let target = |shell: &mut Shell, w| -> Result<WsPath, String> {
                let snapshot = VarSnapshot::of(shell);
                let name = expand_one(w, &snapshot);
                shell
                    .cwd
                    .resolve(&name, shell.backend.guest_root())
                    .map_err(|e| e.to_string())
            };
            match r {
                Redirect::In(w) => {
                    let p = target(self, w)?;
                    let data = self
                        .backend
                        .fs()
                        .read(&p)
                        .map_err(|e| format!("{}: {e}", p.display()))?;
                    io.stdin = Some(Rc::new(data));
                }
                Redirect::Out { target: w, append } | Redirect::Err { target: w, append } => {
                    let p = target(self, w)?;
                    let sink = Sink::buffer();
                    if matches!(r, Redirect::Out { .. }) {
                        io.stdout = sink.clone();
                    } else {
                        io.stderr = sink.clone();
                    }
                    outputs.push((p, *append, sink));
                }
                Redirect::ErrToOut => io.stderr = io.stdout.clone(),
                Redirect::OutToErr => io.stdout = io.stderr.clone(),
            }
        }
        Ok((io, outputs))
    }

    /// Runs a program through the back end in the matching directory.
    fn run_program(&mut self, argv: Vec<String>, assigns: Vec<(String, String)>, io: &Io) -> Flow {
        let mut env = self.exported_vars();
        env.extend(assigns);
        let guest_root = self.backend.guest_root().to_string();
        let tty = self.tty
            && io.stdin.is_none()
            && io.stdout.is_stdout()
            && matches!(io.stderr, Sink::Stderr);
        let cmd = GuestCommand {
            argv,
            env,
            cwd: self.cwd.in_guest(&guest_root),
            tty,
            timeout_ms: self.timeout_ms,
        };
        let stdin = match &io.stdin {
            Some(bytes) => GuestStdin::Bytes(bytes.to_vec()),
            None => GuestStdin::Shell,
        };
        let mut out = io.stdout.writer();
        let mut err = io.stderr.writer();
        self.status = match self.backend.exec(&cmd, stdin, &mut out, &mut err) {
            Ok(code) => code,
            Err(e) => {
                io.stderr.put(
                    format!("nook shell: {}: {}\n", cmd.argv[0], nook::error_chain(&e)).as_bytes(),
                );
                126
            }
        };
        if self.status == INTERRUPTED {
            return Flow::Interrupted;
        }
        Flow::Next
    }

    /// Runs a script file's text with positional `args` (`source`).
    pub(crate) fn source_text(
        &mut self,
        src: &str,
        name: &str,
        args: Vec<String>,
        io: &Io,
    ) -> Flow {
        let list = match parse(src) {
            Ok(l) => l,
            Err(e) => {
                io.stderr
                    .put(format!("nook shell: {name}: {e}\n").as_bytes());
                self.status = 2;
                return Flow::Next;
            }
        };
        self.nested(&list, name, (!args.is_empty()).then_some(args), io)
    }
}

/// The variables as expansion sees them, copied so the file system can be
/// borrowed mutably for globs at the same time.
struct VarSnapshot {
    vars: BTreeMap<String, String>,
    args: Vec<String>,
}

impl VarSnapshot {
    fn of(shell: &Shell) -> VarSnapshot {
        let mut vars = shell.vars.clone();
        for special in ["?", "#", "$", "0", "PWD"] {
            if let Some(v) = shell.var(special) {
                vars.insert(special.to_string(), v);
            }
        }
        VarSnapshot {
            vars,
            args: shell.args.clone(),
        }
    }
}

impl Lookup for VarSnapshot {
    fn var(&self, name: &str) -> Option<String> {
        if let Ok(i) = name.parse::<usize>() {
            if i > 0 {
                return self.args.get(i - 1).cloned();
            }
        }
        self.vars.get(name).cloned()
    }
    fn args(&self) -> Vec<String> {
        self.args.clone()
    }
}

#[cfg(test)]
#[path = "interp_tests.rs"]
mod tests;
