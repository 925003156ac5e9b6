//! One command, in a fresh VM (`nook_run`) or in a session
//! (`nook_session_exec`): its output goes to the caller's writers through
//! the library's pump, which every front end shares (back-pressure, closed
//! pipes, the exit).
#![forbid(unsafe_code)]

use std::io::{Cursor, Write};
use std::path::Path;

use nook_lib::stdio::{self, Ending, PumpedCommand, SharedBuffer, StdioStreams};
use nook_lib::{ExitStatus, Pipe, Vm};

use crate::options::{ExecOptions, VmOptions};
use crate::status::CapiError;

/// Where a command's output goes.
pub struct OutputStreams {
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
}

impl std::fmt::Debug for OutputStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputStreams").finish_non_exhaustive()
    }
}

/// Streams that capture both outputs, and the buffers they fill.
pub fn capture() -> (OutputStreams, SharedBuffer, SharedBuffer) {
    let (out, err) = (SharedBuffer::default(), SharedBuffer::default());
    let streams = OutputStreams {
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
    };
    (streams, out, err)
}

/// Runs `command` to its end, feeding it `stdin` when given.
pub fn pump(
    command: impl PumpedCommand,
    stdin: Option<Vec<u8>>,
    out: OutputStreams,
) -> Result<ExitStatus, CapiError> {
    let streams = StdioStreams {
        stdin: stdin.map(|b| Box::new(Cursor::new(b)) as Box<dyn std::io::Read + Send>),
        stdout: out.stdout,
        stderr: out.stderr,
    };
    // Nobody signals the command: the controller is dropped.
    let (_controller, controls) = stdio::controls();
    match stdio::pump(command, streams, controls) {
        Ending::Exited(status) => Ok(status),
        Ending::OutputFailed { pipe, error, .. } => Err(CapiError::Output {
            pipe: if pipe == Pipe::Stderr {
                "stderr"
            } else {
                "stdout"
            },
            source: error,
        }),
        Ending::Interrupted { signal } => Err(CapiError::Interrupted(signal)),
        Ending::Failed(e) => Err(e.into()),
    }
}

/// `nook_run`: boots a VM (or restores a snapshot), runs `argv` (the
/// image's Entrypoint and Cmd when empty), stops the VM.
pub fn run(
    home: &Path,
    vm: &VmOptions,
    argv: Vec<String>,
    exec: &ExecOptions,
    out: OutputStreams,
) -> Result<ExitStatus, CapiError> {
    if argv.is_empty() && vm.image.is_none() {
        return Err(CapiError::Invalid {
            what: "argv",
            why: "nothing to run: give a command, an image, or both".into(),
        });
    }
    let snapshot = vm.open_snapshot(home)?;
    let mut cfg = vm.config(home)?;
    cfg.holder = "libnook".into();
    let machine = match &snapshot {
        Some(s) => Vm::restore(&s.path, &cfg)?,
        None => Vm::start(cfg)?,
    };
    let result = run_in(&machine, argv, exec, out);
    let _ = machine.stop();
    result
}

fn run_in(
    machine: &Vm,
    argv: Vec<String>,
    exec: &ExecOptions,
    out: OutputStreams,
) -> Result<ExitStatus, CapiError> {
    let argv = if argv.is_empty() {
        machine.image_command()
    } else {
        argv
    };
    if argv.is_empty() {
        return Err(CapiError::Invalid {
            what: "argv",
            why: "the image has no Entrypoint or Cmd: give a command".into(),
        });
    }
    let mut b = machine.exec(argv).envs(exec.env.clone());
    if let Some(cwd) = &exec.cwd {
        b = b.cwd(cwd.clone());
    }
    if let Some(user) = &exec.user {
        b = b.user(user.clone());
    }
    if let Some(t) = exec.timeout {
        b = b.timeout(t);
    }
    if exec.stdin.is_some() {
        b = b.stdin_piped();
    }
    pump(b.spawn()?, exec.stdin.clone(), out)
}
