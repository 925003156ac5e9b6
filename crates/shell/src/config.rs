//! The shell's settings: flags first, then `NOOK_SHELL_*` variables, then
//! the `devshell` ones (`DEVSHELL_VM*`, with their meaning there), then
//! defaults.

use std::path::PathBuf;

/// Where programs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    /// `vm` when a VM engine works here, else `host`.
    Auto,
    Vm,
    Host,
    Sidecar,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    /// Also the devshell names: `lima` and `gamma` mean `vm`, `beta`
    /// means `sidecar`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(BackendChoice::Auto),
            "vm" | "lima" | "gamma" => Ok(BackendChoice::Vm),
            "host" => Ok(BackendChoice::Host),
            "sidecar" | "beta" => Ok(BackendChoice::Sidecar),
            _ => Err(format!(
                "unknown backend `{s}`: use auto, vm, host or sidecar"
            )),
        }
    }
}

/// Where the workspace lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceMode {
    /// A host directory the guest sees live.
    Sync,
    /// A nook volume in the session; `export` copies it to the host.
    Guest,
}

impl std::str::FromStr for WorkspaceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sync" => Ok(WorkspaceMode::Sync),
            "guest" | "guest-primary" => Ok(WorkspaceMode::Guest),
            _ => Err(format!("unknown workspace mode `{s}`: use sync or guest")),
        }
    }
}

/// What the command line says (unset: not given).
#[derive(Debug, Clone, Default)]
pub struct ShellFlags {
    pub backend: Option<BackendChoice>,
    pub mode: Option<WorkspaceMode>,
    pub guest_workspace: Option<String>,
    pub image: Option<String>,
    pub engine: Option<String>,
    pub memory_mib: Option<u32>,
    pub vcpus: Option<u8>,
    pub timeout_ms: Option<u64>,
    pub socket: Option<PathBuf>,
    pub stop_on_exit: Option<bool>,
    pub eager: Option<bool>,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub backend: BackendChoice,
    pub mode: WorkspaceMode,
    pub guest_workspace: String,
    pub image: Option<String>,
    pub engine: String,
    pub memory_mib: u32,
    pub vcpus: u8,
    pub timeout_ms: Option<u64>,
    pub socket: Option<PathBuf>,
    pub stop_on_exit: bool,
    /// Boot as the shell starts (else at the first program).
    pub eager: bool,
}

/// Default memory of the shell's VM: enough for rustc.
pub const DEFAULT_MEMORY_MIB: u32 = 1024;
pub const DEFAULT_GUEST_WORKSPACE: &str = "/workspace";

fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl Settings {
    /// Resolves `flags` over the variables `var` finds.
    pub fn resolve(
        flags: &ShellFlags,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Settings, String> {
        // NOOK_SHELL_X first, then DEVSHELL_VM_X.
        let get = |nook: &str, devshell: Option<&str>| {
            var(nook)
                .map(|v| (nook.to_string(), v))
                .or_else(|| devshell.and_then(|d| var(d).map(|v| (d.to_string(), v))))
                .filter(|(_, v)| !v.is_empty())
        };
        let flag_bool = |name: &str, value: &str| {
            truthy(value)
                .ok_or_else(|| format!("{name}={value}: use 1/0, true/false, yes/no or on/off"))
        };
        let backend = match flags.backend {
            Some(b) => b,
            None => {
                let vm_off = var("DEVSHELL_VM").and_then(|v| truthy(&v)) == Some(false);
                match get("NOOK_SHELL_BACKEND", Some("DEVSHELL_VM_BACKEND")) {
                    Some((name, v)) => v.parse().map_err(|e| format!("{name}: {e}"))?,
                    None if vm_off => BackendChoice::Host,
                    None => BackendChoice::Auto,
                }
            }
        };
        let mode = match flags.mode {
            Some(m) => m,
            None => match get(
                "NOOK_SHELL_WORKSPACE_MODE",
                Some("DEVSHELL_VM_WORKSPACE_MODE"),
            ) {
                Some((name, v)) => v.parse().map_err(|e| format!("{name}: {e}"))?,
                None => WorkspaceMode::Sync,
            },
        };
        let guest_workspace = flags
            .guest_workspace
            .clone()
            .or_else(|| {
                get(
                    "NOOK_SHELL_GUEST_WORKSPACE",
                    Some("DEVSHELL_VM_GUEST_WORKSPACE"),
                )
                .map(|(_, v)| v)
            })
            .unwrap_or_else(|| DEFAULT_GUEST_WORKSPACE.to_string());
        if !guest_workspace.starts_with('/') || guest_workspace == "/" {
            return Err(format!(
                "guest workspace `{guest_workspace}`: use an absolute guest path other than /"
            ));
        }
        let number = |name: &str, v: &str| -> Result<u64, String> {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{name}={v}: not a number"))
        };
        let timeout_ms = match flags.timeout_ms {
            Some(t) => Some(t),
            None => match get("NOOK_SHELL_TIMEOUT_MS", Some("DEVSHELL_VM_EXEC_TIMEOUT_MS")) {
                Some((name, v)) => Some(number(&name, &v)?).filter(|t| *t > 0),
                None => None,
            },
        };
        let memory_mib = match flags.memory_mib {
            Some(m) => m,
            None => match get("NOOK_SHELL_MEMORY_MIB", None) {
                Some((name, v)) => u32::try_from(number(&name, &v)?)
                    .map_err(|_| format!("{name}={v}: too large"))?,
                None => DEFAULT_MEMORY_MIB,
            },
        };
        let vcpus = match flags.vcpus {
            Some(c) => c,
            None => match get("NOOK_SHELL_CPUS", None) {
                Some((name, v)) => u8::try_from(number(&name, &v)?)
                    .map_err(|_| format!("{name}={v}: too large"))?,
                None => 1,
            },
        };
        let stop_on_exit = match flags.stop_on_exit {
            Some(b) => b,
            None => match get("NOOK_SHELL_STOP_ON_EXIT", Some("DEVSHELL_VM_STOP_ON_EXIT")) {
                Some((name, v)) => flag_bool(&name, &v)?,
                None => true,
            },
        };
        let eager = match flags.eager {
            Some(b) => b,
            None => match get("NOOK_SHELL_EAGER", Some("DEVSHELL_VM_EAGER")) {
                Some((name, v)) => flag_bool(&name, &v)?,
                None => true,
            },
        };
        Ok(Settings {
            backend,
            mode,
            guest_workspace,
            image: flags
                .image
                .clone()
                .or_else(|| get("NOOK_SHELL_IMAGE", None).map(|(_, v)| v)),
            engine: flags
                .engine
                .clone()
                .or_else(|| get("NOOK_SHELL_ENGINE", None).map(|(_, v)| v))
                .unwrap_or_else(|| "auto".into()),
            memory_mib,
            vcpus,
            timeout_ms,
            socket: flags.socket.clone().or_else(|| {
                get("NOOK_SHELL_SOCKET", Some("DEVSHELL_VM_SOCKET")).map(|(_, v)| PathBuf::from(v))
            }),
            stop_on_exit,
            eager,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(flags: &ShellFlags, env: &[(&str, &str)]) -> Result<Settings, String> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::resolve(flags, |k| env.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let s = settings(&ShellFlags::default(), &[]).unwrap();
        assert_eq!(s.backend, BackendChoice::Auto);
        assert_eq!(s.mode, WorkspaceMode::Sync);
        assert_eq!(s.guest_workspace, "/workspace");
        assert_eq!(s.memory_mib, DEFAULT_MEMORY_MIB);
        assert!(s.stop_on_exit);
        assert!(s.eager);
        assert_eq!(s.timeout_ms, None);
    }

    #[test]
    fn devshell_variables_keep_their_meaning() {
        let s = settings(
            &ShellFlags::default(),
            &[
                ("DEVSHELL_VM", "off"),
                ("DEVSHELL_VM_WORKSPACE_MODE", "guest"),
                ("DEVSHELL_VM_GUEST_WORKSPACE", "/src"),
                ("DEVSHELL_VM_EXEC_TIMEOUT_MS", "5000"),
                ("DEVSHELL_VM_SOCKET", "/tmp/s.sock"),
                ("DEVSHELL_VM_STOP_ON_EXIT", "0"),
                ("DEVSHELL_VM_EAGER", "no"),
            ],
        )
        .unwrap();
        assert_eq!(s.backend, BackendChoice::Host);
        assert_eq!(s.mode, WorkspaceMode::Guest);
        assert_eq!(s.guest_workspace, "/src");
        assert_eq!(s.timeout_ms, Some(5000));
        assert_eq!(s.socket, Some(PathBuf::from("/tmp/s.sock")));
        assert!(!s.stop_on_exit);
        assert!(!s.eager);
        let s = settings(&ShellFlags::default(), &[("DEVSHELL_VM_BACKEND", "beta")]).unwrap();
        assert_eq!(s.backend, BackendChoice::Sidecar);
    }

    #[test]
    fn flags_beat_nook_variables_beat_devshell_ones() {
        let env = [
            ("DEVSHELL_VM_BACKEND", "host"),
            ("NOOK_SHELL_BACKEND", "vm"),
            ("NOOK_SHELL_MEMORY_MIB", "2048"),
        ];
        let s = settings(&ShellFlags::default(), &env).unwrap();
        assert_eq!(s.backend, BackendChoice::Vm);
        assert_eq!(s.memory_mib, 2048);
        let flags = ShellFlags {
            backend: Some(BackendChoice::Sidecar),
            memory_mib: Some(512),
            ..ShellFlags::default()
        };
        let s = settings(&flags, &env).unwrap();
        assert_eq!(s.backend, BackendChoice::Sidecar);
        assert_eq!(s.memory_mib, 512);
    }

    #[test]
    fn bad_values_are_named() {
        let e = settings(&ShellFlags::default(), &[("DEVSHELL_VM_BACKEND", "podman")]).unwrap_err();
        assert!(e.contains("DEVSHELL_VM_BACKEND"), "{e}");
        let e = settings(
            &ShellFlags::default(),
            &[("DEVSHELL_VM_STOP_ON_EXIT", "maybe")],
        )
        .unwrap_err();
        assert!(e.contains("DEVSHELL_VM_STOP_ON_EXIT"), "{e}");
        let e = settings(
            &ShellFlags::default(),
            &[("DEVSHELL_VM_GUEST_WORKSPACE", "rel")],
        )
        .unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }
}
