//! The text renderings of the tools' results (for clients that show text).

use crate::registry::Render;
use crate::types::*;

impl Render for ExecOutput {
    fn render(&self) -> String {
        let mut t = self.stdout.clone();
        if !self.stderr.is_empty() {
            if !t.is_empty() && !t.ends_with('\n') {
                t.push('\n');
            }
            t.push_str("[stderr]\n");
            t.push_str(&self.stderr);
        }
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        if self.timed_out {
            t.push_str("[timed out: the command's process group was killed; exit code 124]\n");
        } else if let Some(sig) = self.signal {
            t.push_str(&format!(
                "[killed by signal {sig}; exit code {}]\n",
                self.exit_code
            ));
        } else {
            t.push_str(&format!("[exit code {}]\n", self.exit_code));
        }
        if self.truncated {
            t.push_str(&format!(
                "[output truncated: {} more bytes were dropped]\n",
                self.dropped_bytes
            ));
        }
        t
    }
}

impl Render for SandboxCreated {
    fn render(&self) -> String {
        format!(
            "created sandbox {} ({}, {} MiB, {} vCPU; destroyed after {} s idle)",
            self.sandbox_id, self.engine, self.memory_mib, self.cpus, self.idle_timeout_s
        )
    }
}

impl Render for FileWritten {
    fn render(&self) -> String {
        format!(
            "wrote {} bytes to {} (mode {})",
            self.bytes, self.path, self.mode
        )
    }
}

impl Render for FileContent {
    fn render(&self) -> String {
        let mut t = match (&self.content, &self.content_base64) {
            (Some(text), _) => text.clone(),
            (None, Some(b64)) => format!("[binary file, base64]\n{b64}"),
            (None, None) => String::new(),
        };
        if self.truncated {
            if !t.ends_with('\n') {
                t.push('\n');
            }
            t.push_str(&format!("[truncated: the file has {} bytes]\n", self.size));
        }
        t
    }
}

impl Render for FileEntries {
    fn render(&self) -> String {
        let mut t = String::new();
        for e in &self.entries {
            let kind = match e.kind {
                EntryType::File => "file",
                EntryType::Dir => "dir",
                EntryType::Symlink => "symlink",
                EntryType::Other => "other",
            };
            t.push_str(&format!("{kind:<8} {:>12} {}\n", e.size, e.name));
        }
        if self.entries.is_empty() {
            t.push_str(&format!("{} is empty\n", self.path));
        }
        if self.truncated {
            t.push_str("[more entries than one listing returns]\n");
        }
        t
    }
}

impl Render for SnapshotTaken {
    fn render(&self) -> String {
        format!(
            "saved sandbox {} as snapshot {} ({}); start VMs from it with `nook run --snapshot {}`",
            self.sandbox_id, self.name, self.path, self.name
        )
    }
}

impl Render for SandboxList {
    fn render(&self) -> String {
        if self.sandboxes.is_empty() {
            return "no sandboxes are running\n".into();
        }
        let mut t = String::new();
        for s in &self.sandboxes {
            t.push_str(&format!(
                "{} {} {} {} MiB {} vCPU image={}{}\n",
                s.sandbox_id,
                s.state,
                s.engine,
                s.memory_mib,
                s.cpus,
                s.image.as_deref().unwrap_or("default"),
                if s.owned {
                    " (created by this client)"
                } else {
                    ""
                }
            ));
        }
        t
    }
}

impl Render for SandboxDestroyed {
    fn render(&self) -> String {
        format!("destroyed sandbox {}", self.sandbox_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_output_says_how_the_command_ended() {
        let mut out = ExecOutput {
            stdout: "hi\n".into(),
            stderr: "oops".into(),
            exit_code: 3,
            truncated: false,
            dropped_bytes: 0,
            timed_out: false,
            signal: None,
        };
        assert_eq!(out.render(), "hi\n[stderr]\noops\n[exit code 3]\n");
        out.timed_out = true;
        out.exit_code = 124;
        out.truncated = true;
        out.dropped_bytes = 7;
        let t = out.render();
        assert!(t.contains("timed out"), "{t}");
        assert!(t.contains("exit code 124"), "{t}");
        assert!(t.contains("7 more bytes were dropped"), "{t}");
    }
}
