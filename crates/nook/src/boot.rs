//! Starting a [`Vm`]: assets, engine choice, the template fast path, the
//! boot itself with `auto`'s fallback from kvm to qemu, and the wait for
//! the agent's hello with a diagnosis when it never comes.
//!
//! The order, for one `Vm::start`:
//!
//! 1. prepare the kernel and initramfs (cached), choose the engine;
//! 2. plan the disks (image root, scratch, volumes) and the command line;
//! 3. if the configuration has a template on disk, restore a clone of it
//!    and stop here (a clone that fails to restore is discarded, and the
//!    boot below makes a new one);
//! 4. boot; with `auto` on kvm, a guest that does not come up within
//!    [`KVM_AUTO_BOOT_TIMEOUT`] is booted again on qemu, and the verdict is
//!    recorded for this host boot;
//! 5. wait for the agent's hello, watching the console for endings that
//!    will never say hello (a panic, busybox's init, ...);
//! 6. if the configuration can have a template and has none, snapshot the
//!    ready VM into one, then hand the VM to the caller.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{EngineKind, VmConfig};
use crate::conn::{await_hello, Conn, Greeting};
use crate::engine::select::{record_kvm_boot_failure, select_engine, EngineChoice};
use crate::engine::{EngineId, Machine, MachineSpec};
use crate::error::{BootFailure, BootReport, ExecError, VmError};
use crate::storage::{self, StoragePlan};
use crate::template::{trim_templates, Template, TemplateRequest, INPUTS_FILE, MAX_TEMPLATES};
use crate::vm::{assets_config, make_run_dir, Vm, VmOrigin, BASE_CMDLINE, CONSOLE_TAIL};

/// How long `auto` waits for a guest on the kvm engine before it boots the
/// same VM on qemu instead. On hardware KVM a nook guest is ready in well
/// under a second.
pub const KVM_AUTO_BOOT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the round trip before a template snapshot asks the agent to run: a
/// directory, so the agent answers at once with an error.
const SYNC_PROBE: &str = "/";

/// How often the console is checked for a dead end while waiting.
const CONSOLE_CHECK: Duration = Duration::from_millis(250);

pub(crate) fn start(mut cfg: VmConfig) -> Result<Vm, VmError> {
    cfg.resolve_shares()?;
    cfg.validate()?;
    let t0 = Instant::now();
    let leftovers = crate::gc_leftovers(&cfg.home);
    if !leftovers.removed.is_empty() {
        tracing::info!(
            "nook: removed {} leftovers of killed nook processes",
            leftovers.removed.len()
        );
    }
    let assets = nook_assets::prepare(&assets_config(&cfg)?).map_err(VmError::Assets)?;
    tracing::debug!(
        "nook: assets ready in {:.2} ms (downloaded={}, built_initramfs={})",
        t0.elapsed().as_secs_f64() * 1000.0,
        assets.work.downloaded,
        assets.work.built_initramfs
    );
    let choice = select_engine(cfg.engine, &cfg.home)?;
    if let EngineChoice::Kvm {
        hardware_speed: false,
        reason,
    } = &choice
    {
        tracing::warn!("nook: the kvm engine was {reason}");
    }
    let plan = storage::plan(
        cfg.image.as_ref(),
        &cfg.volumes,
        &cfg.home.join("tmp"),
        &cfg.holder,
    )
    .map_err(VmError::Storage)?;
    let cmdline = cmdline(&cfg, &plan, choice.id());
    let mut spec = MachineSpec {
        kernel: assets.kernel.clone(),
        initrd: assets.initramfs.clone(),
        cmdline,
        memory_mib: cfg.memory_mib,
        vcpus: cfg.vcpus,
        run_dir: std::path::PathBuf::new(),
        disks: plan.disks.clone(),
        shares: crate::share::fs_shares(&cfg.shares),
        snapshot_ready: false,
        nic: None,
        balloon: cfg.balloon,
    };
    let template = template_for(&cfg, &spec, &plan, choice.id());
    if let Some(t) = template.as_ref().filter(|t| t.exists()) {
        match Vm::restore(&t.path, &cfg) {
            Ok(mut vm) => {
                tracing::debug!(
                    "nook: restored from template {} on {} in {:?}",
                    t.key,
                    vm.choice.label(),
                    t0.elapsed()
                );
                vm.origin = VmOrigin::Template;
                vm.boot_time = t0.elapsed();
                t.touch();
                // The template was made on the engine chosen now (its key
                // names it): keep the choice's reason.
                vm.choice = choice;
                return Ok(vm);
            }
            Err(e) => {
                tracing::warn!(
                    "nook: cannot restore template {} ({}); booting and making it again",
                    t.path.display(),
                    crate::error::chain(&e)
                );
                t.discard();
            }
        }
    }
    let run_dir = make_run_dir()?;
    spec.run_dir = run_dir.0.clone();
    spec.snapshot_ready = template.is_some();
    let net = cfg.net.as_ref().map(crate::net::start_boot).transpose()?;
    spec.nic = net.as_ref().map(|n| n.nic.clone());
    let (machine, conn, choice) = boot_with_fallback(&cfg, &spec, choice)?;
    let boot_time = t0.elapsed();
    tracing::debug!(
        "nook: booted on {} ({}), agent ready after {boot_time:?}",
        choice.label(),
        choice.reason()
    );
    let engine = choice.id();
    let mut vm = Vm {
        machine: crate::vm::share_machine(machine, &conn),
        conn,
        _run_dir: run_dir,
        choice,
        boot_time,
        _scratch: plan.scratch,
        _locks: plan.locks,
        net: net.map(|n| n.backend),
        cfg,
        origin: VmOrigin::Booted,
    };
    // After a fallback the engine differs from the one the template was
    // looked up for: make the template of the engine that really ran.
    let template = template.and_then(|t| {
        if t.engine() == engine {
            Some(t)
        } else {
            Template::for_request(&vm.cfg.home, &request(&spec, engine))
        }
    });
    if let Some(t) = template {
        make_template(&mut vm, &t);
    }
    Ok(vm)
}

/// The full kernel command line: nook's base, the caller's extra words, and
/// the boot words of the disk plan, the shares and the network (whose MTU
/// depends on the engine).
fn cmdline(cfg: &VmConfig, plan: &StoragePlan, engine: EngineId) -> String {
    let mut words = plan.words.clone();
    words.shares = cfg
        .shares
        .iter()
        .enumerate()
        .map(|(i, s)| crate::share::boot_mount(i, s))
        .collect();
    if cfg.net.is_some() {
        words.net = Some(crate::net::boot_word(engine));
    }
    [BASE_CMDLINE, &cfg.cmdline, &words.to_cmdline()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The template this configuration would use, if it can have one.
fn template_for(
    cfg: &VmConfig,
    spec: &MachineSpec,
    plan: &StoragePlan,
    engine: EngineId,
) -> Option<Template> {
    if !cfg.template {
        return None;
    }
    let why_not = if !cfg.volumes.is_empty() {
        Some("volumes are attached")
    } else if !cfg.shares.is_empty() {
        Some("host directories are shared")
    } else if cfg.balloon.is_some() {
        // A balloon gives guest RAM back by punching holes in the RAM
        // file, so a clone cannot map a template's copy-on-write: it would
        // copy the whole file on every start.
        Some("a memory balloon is configured")
    } else if plan.scratch.is_some() {
        Some("the image's writable layer is on a scratch disk")
    } else {
        None
    };
    if let Some(why) = why_not {
        tracing::debug!("nook: no template for this configuration: {why}");
        return None;
    }
    Template::for_request(&cfg.home, &request(spec, engine))
}

fn request(spec: &MachineSpec, engine: EngineId) -> TemplateRequest<'_> {
    TemplateRequest {
        engine,
        kernel: &spec.kernel,
        initramfs: &spec.initrd,
        cmdline: &spec.cmdline,
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        disks: &spec.disks,
    }
}

/// Snapshots the freshly booted `vm` into template `t`. A failure costs
/// only the template: it is logged and the VM runs on.
fn make_template(vm: &mut Vm, t: &Template) {
    let t0 = Instant::now();
    // A round trip first: once the agent has answered a request, it has
    // read everything sent before (the host's hello), so nothing is in
    // flight on the channel when the snapshot is taken. A path that is no
    // program makes the agent answer without running anything, whatever
    // the root file system holds.
    match vm.exec([SYNC_PROBE]).output() {
        Ok(_)
        | Err(ExecError::NotFound(_))
        | Err(ExecError::NotExecutable(_))
        | Err(ExecError::BadRequest(_)) => {}
        Err(e) => {
            tracing::warn!(
                "nook: not making template {}: the agent did not answer: {e}",
                t.key
            );
            return;
        }
    }
    match vm.snapshot_with(&t.path, &[(INPUTS_FILE, t.inputs_json())], false) {
        Ok(_) => {
            vm.origin = VmOrigin::BootedMadeTemplate;
            let trimmed = trim_templates(&vm.cfg.home, MAX_TEMPLATES);
            if trimmed > 0 {
                tracing::debug!("nook: removed {trimmed} least recently used templates");
            }
            tracing::debug!(
                "nook: made template {} in {:?} ({})",
                t.key,
                t0.elapsed(),
                t.path.display()
            );
        }
        // Another nook made the same template meanwhile (runs of one image
        // share its root disk, so they share its template too).
        Err(_) if t.exists() => {
            tracing::debug!("nook: another nook made template {} meanwhile", t.key);
        }
        Err(e) => tracing::warn!(
            "nook: cannot make template {}: {}",
            t.path.display(),
            crate::error::chain(&e)
        ),
    }
}

type Booted = (Box<dyn Machine>, Arc<Conn>, EngineChoice);

/// Boots `spec` on the chosen engine. With `auto` on kvm, a guest that does
/// not come up is booted again on qemu (TCG), with a warning, and the
/// verdict is recorded so that later runs go to qemu at once.
fn boot_with_fallback(
    cfg: &VmConfig,
    spec: &MachineSpec,
    choice: EngineChoice,
) -> Result<Booted, VmError> {
    let auto_kvm = cfg.engine == EngineKind::Auto && choice.id() == EngineId::Kvm;
    if !auto_kvm {
        let (m, c) = boot_on(cfg, spec, choice.id(), cfg.boot_timeout)?;
        return Ok((m, c, choice));
    }
    let limit = KVM_AUTO_BOOT_TIMEOUT.min(cfg.boot_timeout);
    let why = match boot_on(cfg, spec, EngineId::Kvm, limit) {
        Ok((m, c)) => return Ok((m, c, choice)),
        Err(e @ (VmError::Boot { .. } | VmError::Kvm(_))) => crate::error::chain(&e),
        Err(e) => return Err(e),
    };
    let short = why.lines().next().unwrap_or_default().to_string();
    tracing::warn!(
        "nook: the guest did not come up on the kvm engine ({short}); booting it on qemu instead"
    );
    record_kvm_boot_failure(&cfg.home, &short);
    // The kvm attempt's console log must not be read as qemu's.
    let _ = std::fs::remove_file(spec.run_dir.join("console.log"));
    let choice = EngineChoice::Qemu {
        kvm_accel: false,
        reason: format!("auto fell back from kvm, where the guest did not come up: {short}"),
    };
    let (m, c) = boot_on(cfg, spec, choice.id(), cfg.boot_timeout)?;
    Ok((m, c, choice))
}

/// Boots `spec` on `engine` and waits up to `limit` for the agent.
fn boot_on(
    cfg: &VmConfig,
    spec: &MachineSpec,
    engine: EngineId,
    limit: Duration,
) -> Result<(Box<dyn Machine>, Arc<Conn>), VmError> {
    tracing::info!("nook: booting on {}", engine.label());
    let mut machine = engine.engine().boot(spec)?;
    match connect_agent(machine.as_mut(), cfg, limit) {
        Ok(conn) => Ok((machine, conn)),
        Err(e) => {
            machine.kill();
            Err(e)
        }
    }
}

/// Waits for the agent's hello for up to `limit`, then completes the
/// handshake. A machine that ends, a cancelled boot or a console that shows
/// a dead end fails at once, with the console's last lines and a hint.
fn connect_agent(
    machine: &mut dyn Machine,
    cfg: &VmConfig,
    limit: Duration,
) -> Result<Arc<Conn>, VmError> {
    let Some(stream) = machine.take_channel() else {
        return Err(VmError::NoAgentChannel);
    };
    let cancel = cfg.cancel.clone();
    let mut next_check = Instant::now() + CONSOLE_CHECK;
    let greeting = await_hello(&stream, limit, || {
        if cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Some(BootFailure::Cancelled);
        }
        if let Some(ended) = machine.exited() {
            return Some(BootFailure::MachineEnded(ended));
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + CONSOLE_CHECK;
            if let Some(meaning) = console_dead_end(&machine.console_tail(CONSOLE_TAIL)) {
                return Some(BootFailure::DeadEnd(meaning));
            }
        }
        None
    });
    match greeting? {
        Greeting::Hello(hello, source) => Conn::establish(stream, hello, source),
        Greeting::Failed(mut cause) => {
            // The channel closes a moment before the engine is gone: name
            // the engine's exit rather than the closed channel.
            if matches!(cause, BootFailure::ChannelClosed)
                && machine.wait_exit(crate::ending::EXIT_GRACE)
            {
                if let Some(ended) = machine.exited() {
                    cause = BootFailure::MachineEnded(ended);
                }
            }
            let console = machine.console_tail(CONSOLE_TAIL);
            let cause = match (console_hint(&console), &cause) {
                (_, BootFailure::DeadEnd(_)) | (None, _) => cause,
                (Some(hint), _) => BootFailure::Hinted {
                    cause: Box::new(cause),
                    hint,
                },
            };
            Err(VmError::Boot {
                cause,
                report: Box::new(BootReport {
                    engine_log: machine.engine_log(),
                    console,
                }),
            })
        }
    }
}

/// Console lines after which a guest will never say hello, and what they
/// mean.
const DEAD_ENDS: &[(&str, &str)] = &[
    (
        "Please press Enter to activate this console",
        "the guest ran busybox's init instead of the nook agent: the initramfs's /init is not a \
         working nook-agent (it must be the static one scripts/setup builds)",
    ),
    (
        "Kernel panic - not syncing",
        "the guest kernel panicked (see the console lines below)",
    ),
    (
        "No working init found",
        "the kernel found no /init it could run: the initramfs's agent must be a static \
         x86-64 executable",
    ),
];

/// Hints for a guest that did not say hello but whose console shows no
/// definite dead end.
const HINTS: &[(&str, &str)] = &[
    (
        "nook-agent: init failed",
        "the agent's init failed: a kernel module or device it needs may be missing",
    ),
    (
        "cannot open the agent channel",
        "the agent found no virtio-console port: the virtio_console module may be missing \
         from the initramfs",
    ),
];

/// The dead end the console shows, if any.
fn console_dead_end(console: &str) -> Option<&'static str> {
    DEAD_ENDS
        .iter()
        .find(|(marker, _)| console.contains(marker))
        .map(|(_, meaning)| *meaning)
}

/// The likely cause of a failed boot, from the console.
fn console_hint(console: &str) -> Option<&'static str> {
    console_dead_end(console).or_else(|| {
        HINTS
            .iter()
            .find(|(marker, _)| console.contains(marker))
            .map(|(_, meaning)| *meaning)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_ends_on_the_console_are_named() {
        let busybox =
            "[    2.1] Run /init as init process\n\nPlease press Enter to activate this console. ";
        assert!(console_dead_end(busybox)
            .unwrap()
            .contains("busybox's init"));
        let panic = "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100";
        assert!(console_dead_end(panic).unwrap().contains("panicked"));
        assert_eq!(console_dead_end("[    0.0] Linux version 6.1\n"), None);
        // A hint that is not a dead end: only named once the wait is over.
        let agent = "nook-agent: init failed: cannot mount /dev";
        assert_eq!(console_dead_end(agent), None);
        assert!(console_hint(agent).unwrap().contains("module"));
    }
}
