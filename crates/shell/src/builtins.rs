//! Builtins: they act on the workspace (never outside it) and on the
//! shell's own state.

use crate::interp::{Flow, Shell};
use crate::io::Io;
use crate::workspace::{EntryKind, WorkspaceFs, WsPath};

/// Every builtin and its one-line help.
pub const BUILTINS: &[(&str, &str)] = &[
    ("cd", "cd [DIR]: change directory inside the workspace (no DIR: its root)"),
    ("pwd", "pwd: print the working directory (workspace-relative)"),
    ("ls", "ls [-a] [-l] [PATH...]: list directories"),
    ("cat", "cat [FILE...]: print files (no FILE: stdin)"),
    ("mkdir", "mkdir [-p] DIR...: make directories"),
    ("touch", "touch FILE...: create files or update their time"),
    ("rm", "rm [-r] [-f] PATH...: remove files (-r: directories too)"),
    ("cp", "cp [-r] SRC... DST: copy files (-r: directories too)"),
    ("mv", "mv SRC... DST: move or rename"),
    ("echo", "echo [-n] [WORD...]: print words"),
    ("export", "export [NAME[=VALUE]...]: pass variables to programs; in guest-primary mode `export DIR` copies the workspace to host DIR"),
    ("unset", "unset NAME...: remove variables"),
    ("env", "env: print the exported variables"),
    ("set", "set [-e|+e] [-- ARGS]: exit on the first failure (-e), positional arguments"),
    ("source", "source FILE [ARGS]: run a script file in this shell"),
    (".", ". FILE [ARGS]: same as source"),
    ("command", "command PROGRAM [ARGS]: run the program even when a builtin or function has its name"),
    ("help", "help: this list"),
    ("exit", "exit [N]: leave the shell (stops its VM)"),
    ("return", "return [N]: leave a function"),
    ("break", "break [N]: leave a loop"),
    ("continue", "continue [N]: next loop iteration"),
    ("true", "true: succeed"),
    ("false", "false: fail"),
    (":", ": do nothing, successfully"),
];

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits leading `-xyz` flags (until `--` or a non-flag) from operands.
fn flags(args: &[String]) -> (String, Vec<String>) {
    let mut f = String::new();
    let mut i = 0;
    while let Some(a) = args.get(i) {
        if a == "--" {
            i += 1;
            break;
        }
        if a.len() > 1 && a.starts_with('-') {
            f.push_str(&a[1..]);
            i += 1;
        } else {
            break;
        }
    }
    (f, args[i..].to_vec())
}

impl Shell {
    /// Runs builtin `argv[0]`.
    pub(crate) fn builtin(&mut self, argv: &[String], io: &Io) -> Flow {
        let name = argv[0].as_str();
        let args = &argv[1..];
        let result: Result<Flow, String> = match name {
            "cd" => self.cd(args),
            "pwd" => {
                io.stdout
                    .put(format!("{}\n", self.cwd.display()).as_bytes());
                Ok(Flow::Next)
            }
            "echo" => {
                let (newline, words) = match args.first().map(String::as_str) {
                    Some("-n") => (false, &args[1..]),
                    _ => (true, args),
                };
                let mut s = words.join(" ");
                if newline {
                    s.push('\n');
                }
                io.stdout.put(s.as_bytes());
                Ok(Flow::Next)
            }
            "ls" => self.ls(args, io),
            "cat" => self.cat(args, io),
            "mkdir" => self.mkdir(args),
            "touch" => self.each_path(args, |fs, p| fs.touch(p)),
            "rm" => self.rm(args),
            "cp" => self.cp(args),
            "mv" => self.mv(args),
            "export" => self.export_builtin(args, io),
            "unset" => {
                for a in args {
                    self.vars.remove(a);
                    self.exported.remove(a);
                }
                Ok(Flow::Next)
            }
            "env" => {
                let mut s = String::new();
                for (k, v) in self.exported_vars() {
                    s.push_str(&format!("{k}={v}\n"));
                }
                io.stdout.put(s.as_bytes());
                Ok(Flow::Next)
            }
            "set" => self.set(args),
            "source" | "." => self.source(args, io),
            "help" => {
                let mut s = String::from(
                    "Builtins act on the workspace; every other command runs in the session.\n",
                );
                for (_, h) in BUILTINS {
                    s.push_str(&format!("  {h}\n"));
                }
                io.stdout.put(s.as_bytes());
                Ok(Flow::Next)
            }
            "exit" | "return" => {
                let code = match args.first() {
                    None => Ok(self.status),
                    Some(a) => a
                        .parse::<i32>()
                        .map(|n| n & 0xff)
                        .map_err(|_| format!("{a}: numeric argument required")),
                };
                code.map(|n| {
                    if name == "exit" {
                        Flow::Exit(n)
                    } else {
                        Flow::Return(n)
                    }
                })
            }
            "break" | "continue" => {
                let n = match args.first() {
                    None => Ok(1),
                    Some(a) => a
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("{a}: loop count out of range")),
                };
                n.map(|n| {
                    self.status = 0;
                    if name == "break" {
                        Flow::Break(n)
                    } else {
                        Flow::Continue(n)
                    }
                })
            }
            "true" | ":" | "command" => Ok(Flow::Next),
            "false" => {
                self.status = 1;
                return Flow::Next;
            }
            _ => Err("not a builtin".into()),
        };
        match result {
            Ok(flow) => {
                let keeps_status = matches!(name, "source" | ".")
                    || matches!(
                        flow,
                        Flow::Exit(_) | Flow::Return(_) | Flow::Break(_) | Flow::Continue(_)
                    );
                if !keeps_status {
                    self.status = 0;
                }
                flow
            }
            Err(message) => {
                io.stderr.put(format!("{name}: {message}\n").as_bytes());
                self.status = 1;
                Flow::Next
            }
        }
    }

    fn path(&self, arg: &str) -> Result<WsPath, String> {
        self.cwd
            .resolve(arg, self.backend.guest_root())
            .map_err(|e| e.to_string())
    }

    fn each_path(
        &mut self,
        args: &[String],
        f: impl Fn(&mut dyn WorkspaceFs, &WsPath) -> std::io::Result<()>,
    ) -> Result<Flow, String> {
        if args.is_empty() {
            return Err("missing operand".into());
        }
        let mut failed = Vec::new();
        for a in args {
            let p = self.path(a)?;
            if let Err(e) = f(self.backend.fs(), &p) {
                failed.push(format!("{a}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(Flow::Next)
        } else {
            Err(failed.join("; "))
        }
    }

    fn cd(&mut self, args: &[String]) -> Result<Flow, String> {
        let target = match args.first() {
            None => WsPath::root(),
            Some(a) if a == "-" => self
                .vars
                .get("OLDPWD")
                .and_then(|o| WsPath::root().resolve(o, "").ok())
                .unwrap_or_default(),
            Some(a) => self.path(a)?,
        };
        match self.backend.fs().kind(&target) {
            Ok(Some(EntryKind::Dir)) => {
                let old = std::mem::replace(&mut self.cwd, target);
                self.vars.insert("OLDPWD".into(), old.display());
                Ok(Flow::Next)
            }
            Ok(Some(_)) => Err(format!("{}: not a directory", target.display())),
            Ok(None) => Err(format!("{}: no such directory", target.display())),
            Err(e) => Err(format!("{}: {e}", target.display())),
        }
    }

    fn ls(&mut self, args: &[String], io: &Io) -> Result<Flow, String> {
        let (f, mut paths) = flags(args);
        let all = f.contains('a');
        let long = f.contains('l');
        if paths.is_empty() {
            paths.push(".".into());
        }
        let many = paths.len() > 1;
        let mut out = String::new();
        let mut failed = Vec::new();
        for a in &paths {
            let p = self.path(a)?;
            let fs = self.backend.fs();
            match fs.kind(&p) {
                Ok(Some(EntryKind::Dir)) => match fs.list(&p) {
                    Ok(entries) => {
                        if many {
                            out.push_str(&format!("{a}:\n"));
                        }
                        for e in entries.iter().filter(|e| all || !e.name.starts_with('.')) {
                            out.push_str(&ls_line(&e.name, e.kind, e.size, long));
                        }
                    }
                    Err(e) => failed.push(format!("{a}: {e}")),
                },
                Ok(Some(kind)) => {
                    let size = fs.read(&p).map(|d| d.len() as u64).unwrap_or(0);
                    out.push_str(&ls_line(a, kind, size, long));
                }
                Ok(None) => failed.push(format!("{a}: no such file or directory")),
                Err(e) => failed.push(format!("{a}: {e}")),
            }
        }
        io.stdout.put(out.as_bytes());
        if failed.is_empty() {
            Ok(Flow::Next)
        } else {
            Err(failed.join("; "))
        }
    }

    fn cat(&mut self, args: &[String], io: &Io) -> Result<Flow, String> {
        if args.is_empty() {
            match &io.stdin {
                Some(data) => io.stdout.put(data),
                None => {
                    let mut buf = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf);
                    io.stdout.put(&buf);
                }
            }
            return Ok(Flow::Next);
        }
        let mut failed = Vec::new();
        for a in args {
            if a == "-" {
                if let Some(data) = &io.stdin {
                    io.stdout.put(data);
                }
                continue;
            }
            let p = self.path(a)?;
            match self.backend.fs().read(&p) {
                Ok(data) => io.stdout.put(&data),
                Err(e) => failed.push(format!("{a}: {e}")),
            }
        }
        if failed.is_empty() {
            Ok(Flow::Next)
        } else {
            Err(failed.join("; "))
        }
    }

    fn mkdir(&mut self, args: &[String]) -> Result<Flow, String> {
        let (f, paths) = flags(args);
        let parents = f.contains('p');
        self.each_path(&paths, |fs, p| fs.mkdir(p, parents))
    }

    fn rm(&mut self, args: &[String]) -> Result<Flow, String> {
        let (f, paths) = flags(args);
        let recursive = f.contains('r') || f.contains('R');
        let force = f.contains('f');
        if paths.is_empty() && force {
            return Ok(Flow::Next);
        }
        for a in &paths {
            if self.path(a)?.is_root() {
                return Err(format!("{a}: refusing to remove the workspace root"));
            }
        }
        self.each_path(&paths, |fs, p| match fs.remove(p, recursive) {
            Err(e) if force && e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        })
    }

    /// The destination of `src` for `cp`/`mv`: inside `dst` when that is a
    /// directory.
    fn destination(&mut self, src: &WsPath, dst: &WsPath, many: bool) -> Result<WsPath, String> {
        let is_dir = matches!(self.backend.fs().kind(dst), Ok(Some(EntryKind::Dir)));
        if is_dir {
            let name = src
                .name()
                .ok_or_else(|| "cannot copy the workspace root into itself".to_string())?;
            Ok(dst.child(name))
        } else if many {
            Err(format!("{}: not a directory", dst.display()))
        } else {
            Ok(dst.clone())
        }
    }

    fn cp(&mut self, args: &[String]) -> Result<Flow, String> {
        let (f, paths) = flags(args);
        let recursive = f.contains('r') || f.contains('R') || f.contains('a');
        let (dst, srcs) = paths
            .split_last()
            .filter(|(_, s)| !s.is_empty())
            .ok_or_else(|| "usage: cp [-r] SRC... DST".to_string())?;
        let dst = self.path(dst)?;
        for s in srcs {
            let src = self.path(s)?;
            let to = self.destination(&src, &dst, srcs.len() > 1)?;
            if to.components().starts_with(src.components()) {
                return Err(format!("{s}: cannot copy a directory into itself"));
            }
            copy_tree(self.backend.fs(), &src, &to, recursive).map_err(|e| format!("{s}: {e}"))?;
        }
        Ok(Flow::Next)
    }

    fn mv(&mut self, args: &[String]) -> Result<Flow, String> {
        let (_, paths) = flags(args);
        let (dst, srcs) = paths
            .split_last()
            .filter(|(_, s)| !s.is_empty())
            .ok_or_else(|| "usage: mv SRC... DST".to_string())?;
        let dst = self.path(dst)?;
        for s in srcs {
            let src = self.path(s)?;
            if src.is_root() {
                return Err("cannot move the workspace root".into());
            }
            let to = self.destination(&src, &dst, srcs.len() > 1)?;
            self.backend
                .fs()
                .rename(&src, &to)
                .map_err(|e| format!("{s}: {e}"))?;
        }
        Ok(Flow::Next)
    }

    fn export_builtin(&mut self, args: &[String], io: &Io) -> Result<Flow, String> {
        // Guest-primary mode: `export [DIR]` copies the workspace to the host.
        let dest = match args {
            [] => Some(None),
            [a] if !a.contains('=') && !is_name(a) => Some(Some(std::path::PathBuf::from(a))),
            _ => None,
        };
        if let Some(dest) = dest {
            if let Some(done) = self.backend.export(dest.as_deref()) {
                let to = done.map_err(|e| nook::error_chain(&e))?;
                io.stdout
                    .put(format!("exported the workspace to {}\n", to.display()).as_bytes());
                return Ok(Flow::Next);
            }
        }
        if args.is_empty() {
            let mut s = String::new();
            for (k, v) in self.exported_vars() {
                s.push_str(&format!("export {k}={}\n", crate::backend::sh_quote(&[v])));
            }
            io.stdout.put(s.as_bytes());
            return Ok(Flow::Next);
        }
        for a in args {
            match a.split_once('=') {
                Some((k, v)) if is_name(k) => self.export(k, v),
                None if is_name(a) => {
                    self.exported.insert(a.clone());
                }
                _ => return Err(format!("`{a}`: not a valid variable name")),
            }
        }
        Ok(Flow::Next)
    }

    fn set(&mut self, args: &[String]) -> Result<Flow, String> {
        let mut i = 0;
        while let Some(a) = args.get(i) {
            match a.as_str() {
                "-e" => self.errexit = true,
                "+e" => self.errexit = false,
                "-o" | "+o" if args.get(i + 1).map(String::as_str) == Some("errexit") => {
                    self.errexit = a == "-o";
                    i += 1;
                }
                "--" => {
                    self.args = args[i + 1..].to_vec();
                    return Ok(Flow::Next);
                }
                other => return Err(format!("{other}: unsupported option (set -e, +e, -- ARGS)")),
            }
            i += 1;
        }
        Ok(Flow::Next)
    }

    fn source(&mut self, args: &[String], io: &Io) -> Result<Flow, String> {
        let file = args.first().ok_or("usage: source FILE [ARGS]")?;
        let p = self.path(file)?;
        let data = self
            .backend
            .fs()
            .read(&p)
            .map_err(|e| format!("{file}: {e}"))?;
        let text = String::from_utf8(data).map_err(|_| format!("{file}: not UTF-8 text"))?;
        // The status stays the script's own (see `builtin`).
        Ok(self.source_text(&text, file, args[1..].to_vec(), io))
    }
}

fn ls_line(name: &str, kind: EntryKind, size: u64, long: bool) -> String {
    let suffix = if kind == EntryKind::Dir { "/" } else { "" };
    if long {
        let k = match kind {
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::File => '-',
            EntryKind::Other => '?',
        };
        format!("{k} {size:>10} {name}{suffix}\n")
    } else {
        format!("{name}{suffix}\n")
    }
}

/// Copies file or tree `src` to `dst`.
fn copy_tree(
    fs: &mut dyn WorkspaceFs,
    src: &WsPath,
    dst: &WsPath,
    recursive: bool,
) -> std::io::Result<()> {
    match fs.kind(src)? {
        Some(EntryKind::Dir) => {
            if !recursive {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::IsADirectory,
                    "is a directory (use cp -r)",
                ));
            }
            if fs.kind(dst)?.is_none() {
                fs.mkdir(dst, false)?;
            }
            for e in fs.list(src)? {
                copy_tree(fs, &src.child(&e.name), &dst.child(&e.name), true)?;
            }
            Ok(())
        }
        Some(_) => {
            let data = fs.read(src)?;
            fs.write(dst, &data, false)
        }
        None => Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file or directory",
        )),
    }
}
