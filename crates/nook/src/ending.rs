//! How a guest ended, told from what its console showed and how its
//! engine saw the machine end: a kernel panic (named with its message), a
//! reboot, a power-off, a triple fault. nook never restarts a guest (QEMU
//! runs with `-no-reboot`, the kernel reboots by triple fault with
//! `reboot=t`, and nook's VMM ends on a reset), so every ending ends the VM
//! and is reported within moments to whatever was talking to its agent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::Machine;
use crate::error::MachineExit;
use crate::vm::CONSOLE_TAIL;

/// How long a machine whose agent channel closed may take to end: QEMU
/// closes its sockets a moment before it exits.
pub(crate) const EXIT_GRACE: Duration = Duration::from_secs(2);

/// How many console lines are searched for the words of an ending.
const SEARCHED_LINES: usize = 400;

/// The console line of a kernel panic.
const PANIC: &str = "Kernel panic - not syncing";
/// The console lines of a reboot and of a power-off (the kernel's
/// `reboot:` messages, printed at every log level).
const REBOOT: &str = "reboot: Restarting system";
const POWER_OFF: &[&str] = &["reboot: Power down", "reboot: System halted"];

/// How a guest ended.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GuestEnding {
    /// The guest kernel panicked: its panic line.
    #[error("the guest kernel panicked: {0}")]
    Panic(String),
    #[error("the guest rebooted, which ends a nook VM")]
    Reboot,
    #[error("the guest powered off")]
    PowerOff,
    #[error("the guest triple-faulted")]
    TripleFault,
    /// The machine ended with nothing on the console to say why.
    #[error("the machine ended without a word on the console: {0}")]
    Machine(MachineExit),
}

/// A guest that ended, with the console's last lines.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{how}\n--- last lines of the guest console ---\n{console}")]
pub struct GuestEnded {
    pub how: GuestEnding,
    pub console: String,
}

/// Reads a guest's ending from its console and its engine's exit; `None`
/// when neither says it ended.
pub(crate) fn classify(console: &str, exit: Option<MachineExit>) -> Option<GuestEnding> {
    if let Some(at) = console.rfind(PANIC) {
        let line = console[at..].lines().next().unwrap_or(PANIC);
        return Some(GuestEnding::Panic(line.trim_end().to_string()));
    }
    if console.contains(REBOOT) {
        return Some(GuestEnding::Reboot);
    }
    if POWER_OFF.iter().any(|m| console.contains(m)) {
        return Some(GuestEnding::PowerOff);
    }
    Some(match exit? {
        MachineExit::Kvm(nook_vmm::ExitReason::TripleFault) => GuestEnding::TripleFault,
        MachineExit::Kvm(nook_vmm::ExitReason::PowerOff) => GuestEnding::PowerOff,
        MachineExit::Kvm(nook_vmm::ExitReason::Reset) => GuestEnding::Reboot,
        other => GuestEnding::Machine(other),
    })
}

/// A VM's machine, shared between the [`crate::Vm`] and its agent
/// connection, which asks it how the guest ended when the channel breaks.
pub(crate) type SharedMachine = Arc<Mutex<Box<dyn Machine>>>;

/// What the agent connection keeps of its machine: a weak reference (the
/// VM owns the machine).
pub(crate) type WatchedMachine = std::sync::Weak<Mutex<Box<dyn Machine>>>;

/// How the machine ended, once it has (waiting up to `grace` for it), with
/// the console's last lines; `None` while it runs on and its console shows
/// no ending.
pub(crate) fn ended(machine: &SharedMachine, grace: Duration) -> Option<GuestEnded> {
    let mut m = machine.lock().unwrap_or_else(|p| p.into_inner());
    let exit = if m.wait_exit(grace) { m.exited() } else { None };
    // A panic's oops and trace run to dozens of lines: look far enough
    // back for its first line, show the usual tail.
    let console = m.console_tail(SEARCHED_LINES);
    let how = classify(&console, exit)?;
    let lines: Vec<&str> = console.lines().collect();
    let console = lines[lines.len().saturating_sub(CONSOLE_TAIL)..].join("\n");
    Some(GuestEnded { how, console })
}

/// The console's last lines, for a guest that stopped answering.
pub(crate) fn console(machine: &SharedMachine) -> String {
    machine
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .console_tail(CONSOLE_TAIL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_named_with_its_message() {
        let console = "[ 1.0] sysrq: Trigger a crash\n\
                       [ 1.0] Kernel panic - not syncing: sysrq triggered crash\n\
                       [ 1.0] CPU: 0 PID: 88 Comm: sh\n";
        let how = classify(console, None).unwrap();
        assert_eq!(
            how.to_string(),
            "the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash"
        );
    }

    #[test]
    fn reboots_and_power_offs_are_told_by_the_console() {
        let reboot = "[ 3.1] reboot: Restarting system\n";
        assert!(matches!(classify(reboot, None), Some(GuestEnding::Reboot)));
        let off = "[ 3.1] reboot: Power down\n";
        assert!(matches!(classify(off, None), Some(GuestEnding::PowerOff)));
    }

    #[test]
    fn without_a_console_word_the_engine_tells() {
        use nook_vmm::ExitReason;
        let tf = Some(MachineExit::Kvm(ExitReason::TripleFault));
        assert!(matches!(classify("", tf), Some(GuestEnding::TripleFault)));
        let reset = Some(MachineExit::Kvm(ExitReason::Reset));
        assert!(matches!(classify("", reset), Some(GuestEnding::Reboot)));
        let stopped = Some(MachineExit::Kvm(ExitReason::Stopped));
        assert!(matches!(
            classify("", stopped),
            Some(GuestEnding::Machine(_))
        ));
        // Still running, nothing on the console: no ending to report.
        assert!(classify("[ 0.5] Linux version 6.1\n", None).is_none());
    }
}
