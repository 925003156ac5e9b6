//! Where programs that are not builtins run: a nook session VM
//! ([`vm`]), the host inside a namespace sandbox, or a `devshell-vm`
//! sidecar. Each also says where the workspace's files are for builtins.

pub mod host;
mod remote;
pub mod sidecar;
pub mod vm;

use std::io::Write;

use crate::error::ShellError;
use crate::workspace::WorkspaceFs;

/// A program to run outside the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    pub argv: Vec<String>,
    /// Exported variables and the command's own assignments.
    pub env: Vec<(String, String)>,
    /// The working directory as the program sees it.
    pub cwd: String,
    /// Run on a terminal (the shell's own stdin is forwarded to it).
    pub tty: bool,
    /// Killed after this long.
    pub timeout_ms: Option<u64>,
}

/// What a program reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestStdin {
    /// These bytes, then end of input (a pipeline or `<`).
    Bytes(Vec<u8>),
    /// The shell's own stdin, forwarded while the program runs.
    Shell,
}

/// An execution back end.
pub trait Backend {
    /// `vm`, `host` or `sidecar`, for the prompt.
    fn name(&self) -> &str;
    /// Where the workspace is mounted for programs (`/workspace`).
    fn guest_root(&self) -> &str;
    /// The workspace's files, for builtins.
    fn fs(&mut self) -> &mut dyn WorkspaceFs;
    /// Runs `cmd` to its end, streaming its output, and returns its exit
    /// code (128 + N when signal N ended it). Ctrl-C while it runs goes to
    /// its whole process group.
    fn exec(
        &mut self,
        cmd: &GuestCommand,
        stdin: GuestStdin,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<i32, ShellError>;
    /// Programs on the guest's `PATH`, for completion (empty when unknown).
    fn commands(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Guest-primary mode: copies a snapshot of the workspace to host
    /// directory `dest` (default: the workspace directory the shell was
    /// started on) and returns where; `None` in sync mode.
    fn export(
        &mut self,
        _dest: Option<&std::path::Path>,
    ) -> Option<Result<std::path::PathBuf, ShellError>> {
        None
    }
    /// Ends the back end (stops the VM).
    fn shutdown(&mut self) -> Result<(), ShellError>;
}

/// `argv` as one POSIX `sh` command line.
pub fn sh_quote(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_for_sh() {
        let argv: Vec<String> = ["tr", "a-z", "A Z", "it's", ""]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(sh_quote(&argv), r#"tr a-z 'A Z' 'it'\''s' ''"#);
    }
}
