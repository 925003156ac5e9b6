//! `nook run`: one command in a fresh microVM.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use nook::stdio::{self, Controller, StdioStreams};
use nook::{
    Child, EgressRule, EngineKind, HostEntry, NetConfig, PortMapping, ShareConfig, Vm, VmConfig,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGWINCH};

use crate::args;
use crate::exit::{self, report};
use crate::image;
use crate::term;

/// Options that describe the VM, shared by the commands that boot one.
#[derive(Args, Debug, Clone)]
pub struct VmArgs {
    /// Guest memory in MiB.
    #[arg(long = "memory", default_value_t = 256, value_name = "MIB", value_parser = args::parse_memory_mib)]
    pub memory_mib: u32,
    /// Number of vCPUs (at most 64 on the kvm engine, which auto may choose).
    #[arg(long = "cpus", default_value_t = 1, value_name = "N", value_parser = args::parse_vcpus)]
    pub vcpus: u8,
    /// Engine: auto picks the fastest one that runs guest kernels at speed here.
    #[arg(long, default_value = "auto", value_parser = parse_engine)]
    pub engine: EngineKind,
    /// Guest kernel image to boot instead of Debian's cloud kernel.
    #[arg(long, env = "NOOK_KERNEL", value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// How long to wait for the guest to boot, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECS", value_parser = args::parse_whole_seconds)]
    pub boot_timeout: u64,
    /// Share a host directory at GUEST path through virtio-fs; `:ro` makes it read-only (repeatable).
    #[arg(long = "share", value_name = "HOST:GUEST[:ro]", value_parser = parse_share)]
    pub shares: Vec<ShareConfig>,
    /// Always boot: neither restore this configuration's template snapshot nor make one (also NOOK_NO_TEMPLATE=1).
    #[arg(long)]
    pub no_template: bool,
    /// Give the VM a memory balloon (virtio-balloon) with free page reporting: memory the guest frees goes back to the host, and `nook balloon NAME SIZE` takes more. Such a VM always boots (no template).
    #[arg(long)]
    pub balloon: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// The network options (any of them gives the VM a network).
#[derive(Args, Debug, Clone, Default)]
pub struct NetArgs {
    /// Give the guest a network: user-mode NAT through nook (no root, no host setup). Without it the guest has only `lo`.
    #[arg(long)]
    pub net: bool,
    /// Publish a guest port on the host, bound to 127.0.0.1 unless HOSTIP is given; HOSTPORT 0 lets the kernel choose (repeatable; implies --net).
    #[arg(short = 'p', long = "publish", value_name = "[HOSTIP:]HOSTPORT:GUESTPORT[/tcp|/udp]", value_parser = parse_net::<PortMapping>)]
    pub publish: Vec<PortMapping>,
    /// Allow egress to a host name (*.example.com wildcards, host.nook.internal for the host) or a CIDR, on PORT only if given. With any --allow, everything else is refused (repeatable; implies --net).
    #[arg(long, value_name = "HOST|CIDR[:PORT]", value_parser = parse_net::<EgressRule>)]
    pub allow: Vec<EgressRule>,
    /// Refuse egress to a host name or CIDR (wins over --allow; repeatable; implies --net).
    #[arg(long, value_name = "HOST|CIDR[:PORT]", value_parser = parse_net::<EgressRule>)]
    pub deny: Vec<EgressRule>,
    /// Make nook's DNS answer NAME with IP in the guest (repeatable; implies --net).
    #[arg(long = "add-host", value_name = "NAME:IP", value_parser = parse_net::<HostEntry>)]
    pub add_host: Vec<HostEntry>,
}

fn parse_net<T: std::str::FromStr<Err = nook::NetParseError>>(s: &str) -> Result<T, String> {
    s.parse().map_err(|e: nook::NetParseError| e.to_string())
}

impl NetArgs {
    /// The network these options ask for, if any.
    pub fn config(&self) -> Option<NetConfig> {
        let any = self.net
            || !self.publish.is_empty()
            || !self.allow.is_empty()
            || !self.deny.is_empty()
            || !self.add_host.is_empty();
        any.then(|| NetConfig {
            publish: self.publish.clone(),
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            hosts: self.add_host.clone(),
        })
    }
}

fn parse_engine(s: &str) -> Result<EngineKind, String> {
    s.parse()
}

fn parse_share(s: &str) -> Result<ShareConfig, String> {
    s.parse()
}

impl VmArgs {
    /// Refuses (as a usage error, exit 2) what parsing alone cannot: more
    /// vCPUs than the chosen engine supports.
    pub fn check_usage(&self) {
        args::check_vcpus(self.vcpus, self.engine);
    }

    /// The engine's name as `--engine` spells it.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    pub fn config(&self) -> VmConfig {
        let mut cfg = VmConfig {
            engine: self.engine,
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            boot_timeout: Duration::from_secs(self.boot_timeout),
            ..VmConfig::default()
        };
        if self.kernel.is_some() {
            cfg.kernel = self.kernel.clone();
        }
        cfg.shares = self.shares.clone();
        if self.no_template {
            cfg.template = false;
        }
        cfg.net = self.net.config();
        cfg.balloon = self.balloon.then(nook::BalloonConfig::reporting);
        cfg
    }
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Kill the command (its whole process group) after this many seconds; nook then exits 124.
    #[arg(long, value_name = "SECS", value_parser = args::parse_seconds, allow_negative_numbers = true)]
    pub timeout: Option<Duration>,
    /// Set an environment variable in the guest (repeatable).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Forward stdin even when it is a terminal (it is always forwarded from a pipe or file).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal (raw mode, window resize).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Start from this named snapshot (see `nook snapshot create`) instead of booting; options the restore cannot honour (IMAGE, -v, a different --memory, ...) are refused.
    #[arg(long, value_name = "NAME")]
    pub snapshot: Option<String>,
    /// Run the command as this guest user: name, uid, uid:gid or name:group (default: the image's User, else root).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Attach a volume: NAME:/path[:ro] (a named volume, created on first use) or /host/file.img:/path[:ro] (an ext4 image file). Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "SRC:/PATH[:ro]")]
    pub volumes: Vec<String>,
    /// Size of the named volumes --volume creates.
    #[arg(long, default_value = "1G", value_parser = image::parse_size, value_name = "SIZE")]
    pub volume_size: u64,
    /// Keep the image's writable layer on an ext4 scratch disk of this size (deleted with the VM) instead of in guest memory.
    #[arg(long, value_parser = image::parse_size, value_name = "SIZE")]
    pub disk_size: Option<u64>,
    /// Image to boot (from the store, pulled when missing); default: the built-in minimal root.
    #[arg(value_name = "IMAGE")]
    pub image: Option<String>,
    /// The command and its arguments (default: the image's Entrypoint and Cmd).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What `nook run` boots and runs, parsed and resolved before any VM exists.
struct Plan {
    env: Vec<(String, String)>,
    image: Option<nook::ImageInfo>,
    volumes: Vec<nook::VolumeMount>,
    tty: bool,
    forward_stdin: bool,
}

/// `-e K=V` arguments as pairs; on a malformed one, says so and gives the exit code.
pub fn parse_env(args: &[String]) -> Result<Vec<(String, String)>, i32> {
    let mut env = Vec::new();
    for kv in args {
        match kv.split_once('=') {
            Some((k, v)) if !k.is_empty() => env.push((k.to_string(), v.to_string())),
            _ => {
                eprintln!("nook: -e expects KEY=VALUE, got `{kv}`");
                return Err(exit::NOOK_FAILED);
            }
        }
    }
    Ok(env)
}

pub fn run(args: RunArgs, matches: Option<&clap::ArgMatches>) -> i32 {
    let given = |id: &str| {
        matches.is_some_and(|m| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
    };
    if let Some(name) = &args.snapshot {
        if let Err(code) = check_snapshot_options(&args, name, &given) {
            return code;
        }
    }
    let plan = match plan(&args) {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Signals are handled from the start so that an interrupted boot still
    // tears the VM down.
    let (controller, controls) = stdio::controls();
    let cancel = Arc::new(AtomicBool::new(false));
    if let Err(e) = handle_signals(controller, cancel.clone(), plan.tty) {
        report(&e);
        return exit::NOOK_FAILED;
    }
    let vm = match boot(&args, &plan, cancel.clone()) {
        Ok(vm) => vm,
        Err(e) => {
            if cancel.load(Ordering::Relaxed) {
                let signal = controls.take_signal().unwrap_or(SIGINT);
                return exit::killed_by(signal);
            }
            report(&e);
            return exit::NOOK_FAILED;
        }
    };
    print_published(&vm);
    let child = match spawn(&vm, &args, &plan) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let raw = if plan.tty {
        term::RawMode::enable()
    } else {
        None
    };
    let ending = stdio::pump(child, StdioStreams::inherit(plan.forward_stdin), controls);
    drop(raw);
    if let Some(msg) = ending.message() {
        eprintln!("nook: {msg}");
    }
    if vm.has_writable_volumes() {
        // The guest syncs and unmounts its volumes before powering off.
        let _ = vm.shutdown(Duration::from_secs(10));
    } else {
        let _ = vm.stop();
    }
    ending.exit_code()
}

/// With `--snapshot`, refuses (exit 2) the options a restore cannot
/// honour: the snapshot fixed its root, disks, kernel, size and engine.
/// Its shares and network are checked by the library; the command's own
/// options (-e, -w, -u, --timeout, -i, -t) apply as always.
fn check_snapshot_options(
    args: &RunArgs,
    name: &str,
    given: &dyn Fn(&str) -> bool,
) -> Result<(), i32> {
    let home = nook::default_home();
    let snap = match nook::named_snapshot(&home, name).and_then(|p| nook::Snapshot::open(&p)) {
        Ok(s) => s,
        Err(e) => {
            report(&e);
            return Err(exit::NOOK_FAILED);
        }
    };
    let refused = snapshot_conflicts(args, given, &snap.manifest);
    if refused.is_empty() {
        return Ok(());
    }
    eprintln!(
        "nook: --snapshot {name} cannot honour {}: leave them out, or run without --snapshot",
        refused.join("; ")
    );
    Err(exit::USAGE)
}

/// The options `--snapshot` cannot honour, each with why.
fn snapshot_conflicts(
    args: &RunArgs,
    given: &dyn Fn(&str) -> bool,
    m: &nook::SnapshotManifest,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(image) = &args.image {
        out.push(format!("IMAGE {image} (the snapshot has its own root)"));
    }
    if !args.volumes.is_empty() {
        out.push("-v/--volume (a restored VM has the snapshot's disks)".into());
    }
    for (id, flag) in [
        ("disk_size", "--disk-size"),
        ("volume_size", "--volume-size"),
        ("kernel", "--kernel"),
        ("boot_timeout", "--boot-timeout"),
    ] {
        if given(id) {
            out.push(format!("{flag} (nothing boots)"));
        }
    }
    if given("memory_mib") && args.vm.memory_mib != m.memory_mib {
        out.push(format!(
            "--memory {} (the snapshot has {} MiB)",
            args.vm.memory_mib, m.memory_mib
        ));
    }
    if given("vcpus") && args.vm.vcpus != m.vcpus {
        out.push(format!(
            "--cpus {} (the snapshot has {})",
            args.vm.vcpus, m.vcpus
        ));
    }
    let same_engine = match args.vm.engine {
        EngineKind::Auto => true,
        EngineKind::Kvm => m.engine == nook::EngineId::Kvm,
        EngineKind::Qemu => m.engine != nook::EngineId::Kvm,
    };
    if given("engine") && !same_engine {
        out.push(format!(
            "--engine (the snapshot runs on {})",
            m.engine.label()
        ));
    }
    out
}

/// Checks the arguments and resolves the image and volumes. Pulls and
/// volume creation happen before nook handles signals: an interrupt simply
/// ends nook (the image store is crash-safe).
fn plan(args: &RunArgs) -> Result<Plan, i32> {
    let fail = |msg: String| {
        eprintln!("nook: {msg}");
        exit::NOOK_FAILED
    };
    let env = parse_env(&args.env)?;
    if args.image.is_none() && args.command.is_empty() {
        return Err(fail(
            "nothing to run: give an IMAGE, a command after --, or both".into(),
        ));
    }
    if args.disk_size.is_some() && args.image.is_none() {
        return Err(fail(
            "--disk-size applies to an IMAGE's writable layer: give an IMAGE".into(),
        ));
    }
    let image = match &args.image {
        Some(reference) => Some(image::resolve_image(reference, false).map_err(|e| {
            report(&e);
            exit::NOOK_FAILED
        })?),
        None => None,
    };
    let volumes = args
        .volumes
        .iter()
        .map(|spec| image::parse_volume(spec, args.volume_size))
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    let tty = args.tty && term::stdin_is_tty();
    if args.tty && !tty {
        eprintln!("nook: -t needs a terminal on stdin; running without one");
    }
    Ok(Plan {
        env,
        image,
        volumes,
        tty,
        forward_stdin: args.interactive || tty || !term::stdin_is_tty(),
    })
}

/// Passes SIGINT, SIGTERM and SIGHUP to the command (and cancels a boot in
/// progress); SIGWINCH resizes its terminal.
pub(crate) fn handle_signals(
    controller: Controller,
    cancel: Arc<AtomicBool>,
    tty: bool,
) -> std::io::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP, SIGWINCH])?;
    std::thread::Builder::new()
        .name("nook-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != SIGWINCH {
                    cancel.store(true, Ordering::Relaxed);
                    controller.signal(sig);
                } else if let (true, Some(size)) = (tty, term::size()) {
                    controller.resize(size);
                }
            }
        })?;
    Ok(())
}

/// Says where published ports whose host port the kernel chose ended up.
pub(crate) fn print_published(vm: &Vm) {
    for p in vm.published_ports() {
        if p.mapping.host_port == 0 {
            eprintln!(
                "nook: published {} -> guest port {}/{}",
                p.host, p.mapping.guest_port, p.mapping.protocol
            );
        }
    }
}

/// Boots the VM (or restores the snapshot) the arguments describe.
fn boot(args: &RunArgs, plan: &Plan, cancel: Arc<AtomicBool>) -> Result<Vm, nook::VmError> {
    let mut cfg = args.vm.config();
    cfg.cancel = Some(cancel);
    cfg.holder = "nook run".into();
    cfg.image = plan.image.as_ref().map(|info| {
        let mut root = nook::ImageRoot::new(info);
        root.scratch_size = args.disk_size;
        root
    });
    cfg.volumes = plan.volumes.clone();
    match &args.snapshot {
        Some(name) => {
            nook::named_snapshot(&cfg.home, name).and_then(|path| Vm::restore(&path, &cfg))
        }
        None => Vm::start(cfg),
    }
}

/// Starts the command: the one given, else the image's Entrypoint + Cmd;
/// the image's Env, WorkingDir and User apply unless -e, -w or -u say
/// otherwise.
fn spawn(vm: &Vm, args: &RunArgs, plan: &Plan) -> Result<Child, i32> {
    let argv = if args.command.is_empty() {
        vm.image_command()
    } else {
        args.command.clone()
    };
    if argv.is_empty() {
        eprintln!(
            "nook: image {} has no Entrypoint or Cmd: give a command after --",
            args.image.as_deref().unwrap_or_default()
        );
        return Err(exit::NOOK_FAILED);
    }
    let mut builder = vm.exec(argv).envs(plan.env.clone());
    if let Some(w) = &args.workdir {
        builder = builder.cwd(w.clone());
    }
    if let Some(u) = &args.user {
        builder = builder.user(u.clone());
    }
    if let Some(t) = args.timeout {
        builder = builder.timeout(t);
    }
    if plan.forward_stdin {
        builder = builder.stdin_piped();
    }
    if plan.tty {
        builder = builder.tty(term::size().unwrap_or(nook::Winsize { rows: 24, cols: 80 }));
    }
    builder.spawn().map_err(|e| {
        eprintln!("nook: {e}");
        e.exit_code()
    })
}
