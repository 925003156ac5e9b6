//! Commands and their capped output: `run` in a fresh VM ([`nook::Vm`]),
//! `sandbox_exec` in a session ([`nook_serve::SessionClient`]). Both feed
//! one [`Capture`], and exit codes follow [`nook::ExitStatus::shell_code`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nook::{ExecEvent, Vm};
use nook_serve::wire::{decode_bytes, ExecSpec, SessionReply};
use nook_serve::{SessionClient, SessionError};

use crate::cancel::Cancel;
use crate::capture::Capture;
use crate::config::McpConfig;
use crate::error::ToolError;
use crate::types::{
    check_env, check_guest_path, check_timeout, ExecOutput, RunArgs, SandboxExecArgs,
};

/// Stdin bytes per line sent to a session (well under its line limit).
const STDIN_CHUNK: usize = 64 * 1024;

/// What a shell command runs with, checked.
struct Command {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: Option<String>,
    timeout: Option<std::time::Duration>,
}

impl Command {
    fn new(
        command: &str,
        env: Option<std::collections::BTreeMap<String, String>>,
        workdir: Option<String>,
        timeout_s: Option<f64>,
    ) -> Result<Command, ToolError> {
        if let Some(w) = &workdir {
            check_guest_path("workdir", w)?;
        }
        Ok(Command {
            argv: vec!["/bin/sh".into(), "-c".into(), command.to_string()],
            env: check_env(env)?,
            workdir,
            timeout: check_timeout(timeout_s)?,
        })
    }
}

/// Image `reference` from the store under `home`, pulled when missing.
pub fn resolve_image(home: &Path, reference: &str) -> Result<nook::ImageInfo, ToolError> {
    let err = |source| ToolError::Image {
        reference: reference.to_string(),
        source: Box::new(source),
    };
    nook::ImageStore::open(&home.join("images"))
        .and_then(|store| store.get_or_pull(reference, &nook::PullOptions::default()))
        .map_err(err)
}

/// `run`: boots a VM (from the configuration's template when there is
/// one), runs the command, stops the VM.
pub fn run(cfg: &McpConfig, args: RunArgs, cancel: &Cancel) -> Result<ExecOutput, ToolError> {
    let cmd = Command::new(&args.command, args.env, args.workdir, args.timeout_s)?;
    let mut vm_cfg = cfg.vm.clone();
    if let Some(reference) = &args.image {
        let info = resolve_image(&vm_cfg.home, reference)?;
        vm_cfg.image = Some(nook::ImageRoot::new(&info));
    }
    let abandon = Arc::new(AtomicBool::new(false));
    vm_cfg.cancel = Some(abandon.clone());
    cancel.on_cancel(move || abandon.store(true, Ordering::SeqCst));
    let vm = Vm::start(vm_cfg).map_err(|e| match cancel.is_cancelled() {
        true => ToolError::Cancelled,
        false => ToolError::Vm(Box::new(e)),
    })?;
    let mut b = vm.exec(cmd.argv).envs(cmd.env);
    if let Some(w) = cmd.workdir {
        b = b.cwd(w);
    }
    if let Some(t) = cmd.timeout {
        b = b.timeout(t);
    }
    if let Some(text) = args.stdin {
        b = b.stdin_bytes(text.into_bytes());
    }
    let mut child = b.spawn().map_err(|e| ToolError::Exec(Box::new(e)))?;
    let handle = child.handle();
    cancel.on_cancel(move || {
        let _ = handle.signal(9);
    });
    let mut capture = Capture::new(cfg.max_output);
    let result = loop {
        match child.next_event() {
            Ok(ExecEvent::Stdout(b)) => capture.stdout(&b),
            Ok(ExecEvent::Stderr(b)) => capture.stderr(&b),
            Ok(ExecEvent::Exit(status)) => break Ok(capture.finish(status)),
            Err(e) => break Err(ToolError::Exec(Box::new(e))),
        }
    };
    drop(child);
    let _ = vm.stop();
    result
}

/// `sandbox_exec`: runs the command in a session, streaming its output
/// into the capture; cancelling kills it.
pub fn exec_in(
    client: &SessionClient,
    cfg: &McpConfig,
    args: SandboxExecArgs,
    cancel: &Cancel,
) -> Result<ExecOutput, ToolError> {
    let id = args.sandbox_id.as_str();
    let cmd = Command::new(&args.command, args.env, args.workdir, args.timeout_s)?;
    let spec = ExecSpec {
        argv: cmd.argv,
        env: cmd.env,
        cwd: cmd.workdir,
        stdin: args.stdin.is_some(),
        timeout_ms: cmd
            .timeout
            .map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
        ..ExecSpec::default()
    };
    let failed = |e| ToolError::session("sandbox_exec", id, e);
    let mut remote = client.exec(spec).map_err(failed)?;
    if let Some(text) = args.stdin {
        let mut input = remote
            .input
            .try_clone()
            .map_err(|e| failed(SessionError::Connection(e)))?;
        std::thread::Builder::new()
            .name("nook-mcp-stdin".into())
            .spawn(move || {
                // A command that stops reading ends this early, as a pipe would.
                for chunk in text.as_bytes().chunks(STDIN_CHUNK) {
                    if input.stdin(chunk).is_err() {
                        return;
                    }
                }
                let _ = input.close_stdin();
            })
            .map_err(|e| failed(SessionError::Connection(e)))?;
    }
    if let Ok(mut control) = remote.input.try_clone() {
        cancel.on_cancel(move || {
            let _ = control.signal(9);
        });
    }
    let decode = |data: &str| {
        decode_bytes(data)
            .map_err(|_| failed(SessionError::Protocol("output is not base64".into())))
    };
    let mut capture = Capture::new(cfg.max_output);
    loop {
        let reply = remote.next_reply().map_err(failed)?;
        match reply {
            Some(SessionReply::Stdout { data }) => capture.stdout(&decode(&data)?),
            Some(SessionReply::Stderr { data }) => capture.stderr(&decode(&data)?),
            Some(SessionReply::Exit {
                code,
                signal,
                timed_out,
            }) => {
                return Ok(capture.finish(nook::ExitStatus {
                    code,
                    signal,
                    timed_out,
                }))
            }
            Some(SessionReply::Error { code, message }) => {
                return Err(failed(SessionError::Refused { code, message }))
            }
            Some(other) => {
                return Err(failed(SessionError::Protocol(format!(
                    "unexpected reply during exec: {other:?}"
                ))))
            }
            None => {
                return Err(ToolError::Ended(format!(
                    "sandbox `{id}` closed the connection before the command ended (it may have stopped)"
                )))
            }
        }
    }
}
