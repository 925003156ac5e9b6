//! The interactive loop on `rustyline`: history per workspace, completion
//! of builtins, functions, guest programs and workspace paths, and a prompt
//! with the back end and the workspace-relative directory.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context, Editor, Helper};

use crate::interp::{Flow, Shell};
use crate::workspace::WsPath;

/// What completion knows, refreshed before each line.
#[derive(Debug, Default)]
struct Known {
    commands: Vec<String>,
    /// The host directory of the workspace (sync mode), for paths.
    workspace: Option<PathBuf>,
    cwd: WsPath,
    guest_root: String,
}

#[derive(Debug)]
struct ShellHelper(Rc<RefCell<Known>>);

impl Helper for ShellHelper {}
impl Hinter for ShellHelper {
    type Hint = String;
}
impl Highlighter for ShellHelper {}
impl Validator for ShellHelper {}

/// Where the word under the cursor starts.
fn word_start(line: &str, pos: usize) -> usize {
    line[..pos]
        .rfind(|c: char| c.is_whitespace() || "|&;<>()".contains(c))
        .map(|i| i + 1)
        .unwrap_or(0)
}

/// Whether the word at `start` is in command position.
fn command_position(line: &str, start: usize) -> bool {
    let before = line[..start].trim_end();
    before.is_empty() || before.ends_with(['|', '&', ';', '('])
}

impl Completer for ShellHelper {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let known = self.0.borrow();
        let start = word_start(line, pos);
        let word = &line[start..pos];
        let mut out = Vec::new();
        if command_position(line, start) && !word.contains('/') {
            for c in known.commands.iter().filter(|c| c.starts_with(word)) {
                out.push(Pair {
                    display: c.clone(),
                    replacement: format!("{c} "),
                });
            }
            out.dedup_by(|a, b| a.display == b.display);
            if !out.is_empty() {
                return Ok((start, out));
            }
        }
        let (dir_part, file_part) = match word.rfind('/') {
            Some(i) => (&word[..=i], &word[i + 1..]),
            None => ("", word),
        };
        let (Some(root), Ok(dir)) = (
            &known.workspace,
            known.cwd.resolve(
                if dir_part.is_empty() { "." } else { dir_part },
                &known.guest_root,
            ),
        ) else {
            return Ok((start, out));
        };
        let mut host = root.clone();
        for c in dir.components() {
            host.push(c);
        }
        if let Ok(entries) = std::fs::read_dir(&host) {
            let mut names: Vec<(String, bool)> = entries
                .flatten()
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    (name, is_dir)
                })
                .filter(|(n, _)| {
                    n.starts_with(file_part) && (file_part.starts_with('.') || !n.starts_with('.'))
                })
                .collect();
            names.sort();
            for (name, is_dir) in names {
                let suffix = if is_dir { "/" } else { " " };
                out.push(Pair {
                    display: format!("{name}{}", if is_dir { "/" } else { "" }),
                    replacement: format!("{dir_part}{name}{suffix}"),
                });
            }
        }
        Ok((start, out))
    }
}

/// Runs the interactive loop until `exit` or Ctrl-D; returns the exit code.
pub fn run(shell: &mut Shell, history: Option<PathBuf>, workspace: Option<PathBuf>) -> i32 {
    let known = Rc::new(RefCell::new(Known {
        workspace,
        ..Known::default()
    }));
    let mut editor: Editor<ShellHelper, DefaultHistory> = match Editor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("nook shell: cannot start line editing: {e}");
            return 1;
        }
    };
    editor.set_helper(Some(ShellHelper(known.clone())));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    let mut pending = String::new();
    let code = loop {
        {
            let mut k = known.borrow_mut();
            k.cwd = shell.cwd().clone();
            k.guest_root = shell.backend().guest_root().to_string();
            if k.commands.len() <= crate::builtins::BUILTINS.len() + shell.functions().len() {
                let mut commands: Vec<String> = crate::builtins::BUILTINS
                    .iter()
                    .map(|(b, _)| b.to_string())
                    .collect();
                commands.extend(shell.functions());
                commands.extend(shell.backend().commands());
                commands.sort();
                commands.dedup();
                k.commands = commands;
            }
        }
        let prompt = if pending.is_empty() {
            let backend = shell.backend().name().to_string();
            format!("nook:{backend} {}$ ", shell.cwd().display())
        } else {
            "> ".to_string()
        };
        match editor.readline(&prompt) {
            Ok(line) => {
                if !pending.is_empty() {
                    pending.push('\n');
                }
                pending.push_str(&line);
                match crate::parse::parse(&pending) {
                    Err(e) if e.incomplete => continue,
                    _ => {}
                }
                let text = std::mem::take(&mut pending);
                if !text.trim().is_empty() {
                    let _ = editor.add_history_entry(text.as_str());
                }
                shell.clear_interrupts();
                match shell.run_source(&text) {
                    Ok(Flow::Exit(code)) => break code,
                    Ok(_) => {}
                    Err(e) => {
                        eprintln!("nook shell: {e}");
                        shell.set_status(2);
                    }
                }
            }
            Err(ReadlineError::Interrupted) => {
                pending.clear();
                shell.set_status(crate::interp::INTERRUPTED);
            }
            Err(ReadlineError::Eof) => {
                if pending.is_empty() {
                    break shell.status();
                }
                eprintln!("nook shell: unexpected end of input");
                pending.clear();
            }
            Err(e) => {
                eprintln!("nook shell: {e}");
                break 1;
            }
        }
    };
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = editor.save_history(h);
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_command_positions() {
        let line = "echo hi | tr a";
        assert_eq!(word_start(line, line.len()), line.len() - 1);
        assert!(command_position("ls && ca", 6));
        assert!(command_position("ca", 0));
        assert!(!command_position("echo ca", 5));
    }

    #[test]
    fn paths_and_commands_complete() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("src/bin")).unwrap();
        std::fs::write(dir.path().join("src/main.rs"), "").unwrap();
        let known = Rc::new(RefCell::new(Known {
            commands: vec!["cargo".into(), "cat".into(), "cd".into()],
            workspace: Some(dir.path().to_path_buf()),
            cwd: WsPath::root(),
            guest_root: "/workspace".into(),
        }));
        let h = ShellHelper(known);
        let history = DefaultHistory::new();
        let ctx = Context::new(&history);
        let (start, c) = h.complete("ca", 2, &ctx).unwrap();
        assert_eq!(start, 0);
        let names: Vec<&str> = c.iter().map(|p| p.display.as_str()).collect();
        assert_eq!(names, ["cargo", "cat"]);
        let (start, c) = h.complete("cat src/m", 9, &ctx).unwrap();
        assert_eq!(start, 4);
        assert_eq!(c[0].replacement, "src/main.rs ");
        let (_, c) = h.complete("cd s", 4, &ctx).unwrap();
        assert_eq!(c[0].replacement, "src/");
        // Nothing outside the workspace.
        let (_, c) = h.complete("cat ../", 7, &ctx).unwrap();
        assert!(c.is_empty());
    }
}
