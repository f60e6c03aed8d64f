//! `tern vm`, `tern volume`, `tern checkpoint`, `tern host`: the CLI over
//! the host daemon's REST API.
//!
//! Every command takes `--host` (`unix:/path` or `http://HOST:PORT`, default
//! the local daemon's socket), `--token`/`--token-file` for TCP and
//! `--json` (print the API's JSON instead of text). Exit codes are in
//! [`code`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tern_api::client::WsMessage;
use tern_api::{
    Client, ClientError, CreateDisk, CreateVm, DiskFormat, DiskQos, Endpoint, MigrationState, Size,
    StartMigration, Vm,
};

/// Exit codes of the API commands (stable: scripts may rely on them).
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// The operation failed on the host (the VM failed to start, the
    /// daemon hit an error: HTTP 5xx).
    pub const FAILED: i32 = 1;
    /// No such VM, disk, checkpoint or migration (HTTP 404).
    pub const NOT_FOUND: i32 = 2;
    /// Not possible in the current state, or the name is taken (HTTP 409).
    pub const CONFLICT: i32 = 3;
    /// The daemon does not implement this yet (HTTP 501).
    pub const NOT_IMPLEMENTED: i32 = 4;
    /// Bad command line (as `tern run`).
    pub const USAGE: i32 = 64;
    /// The daemon refused the request as invalid (HTTP 400).
    pub const INVALID: i32 = 65;
    /// The daemon cannot be reached.
    pub const UNREACHABLE: i32 = 69;
    /// Missing or wrong token (HTTP 401).
    pub const UNAUTHORIZED: i32 = 77;
}

/// How to reach the daemon, and how to print.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// The daemon: unix:/path/ternd.sock or http://HOST:PORT (default: the
    /// local daemon's socket).
    #[arg(long, global = true, env = "TERN_HOST")]
    host: Option<String>,
    /// Bearer token for a TCP daemon.
    #[arg(long, global = true, env = "TERN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, global = true, env = "TERN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Print JSON (the API's objects) instead of text.
    #[arg(long, global = true)]
    json: bool,
}

/// The commands that talk to the daemon.
#[derive(Subcommand, Debug)]
pub enum ApiCommand {
    /// Manage VMs on a host daemon (ternd).
    Vm(VmCmd),
    /// Manage the daemon's virtual disks (create, resize, QoS, ...).
    Volume(VolumeCmd),
    /// Manage checkpoints of a VM.
    Checkpoint(CheckpointCmd),
    /// Show the host daemon's status.
    Host(HostCmd),
}

/// `tern vm ...`.
#[derive(Args, Debug)]
pub struct VmCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: VmAction,
}

#[derive(Subcommand, Debug)]
enum VmAction {
    /// Define a VM (stopped until started).
    Create {
        /// Name.
        name: String,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Guest memory, e.g. 64M, 512M, 2G.
        #[arg(long, default_value = "512M", value_parser = tern_api::parse_size)]
        memory: u64,
        /// Guest: probe:WORKLOAD (e.g. probe:hello, probe:dirty,mib=32,rate=50+verify).
        #[arg(long)]
        guest: String,
        /// Disk to attach (by name; repeat for several).
        #[arg(long = "disk")]
        disks: Vec<String>,
        /// Start it right away.
        #[arg(long)]
        start: bool,
    },
    /// List VMs.
    #[command(alias = "ls")]
    List,
    /// Show one VM.
    Show {
        /// VM name or id.
        name: String,
    },
    /// Start a VM (returns once its worker runs).
    Start {
        /// VM name or id.
        name: String,
    },
    /// Stop a VM (waits for its worker to exit).
    Stop {
        /// VM name or id.
        name: String,
        /// Kill the worker at once instead of asking it to stop.
        #[arg(long)]
        force: bool,
    },
    /// Pause a VM's vCPUs.
    Pause {
        /// VM name or id.
        name: String,
    },
    /// Resume a paused VM.
    Resume {
        /// VM name or id.
        name: String,
    },
    /// Save a VM's state to disk and stop its worker.
    Save {
        /// VM name or id.
        name: String,
    },
    /// Restore a saved VM.
    Restore {
        /// VM name or id.
        name: String,
    },
    /// Delete a VM (its disks are kept).
    #[command(alias = "rm")]
    Delete {
        /// VM name or id.
        name: String,
        /// Force-stop it first if it runs.
        #[arg(long)]
        force: bool,
    },
    /// Attach to a VM's serial console (detach with Ctrl-]).
    Console {
        /// VM name or id.
        name: String,
        /// Detach key: ctrl-X for a letter or one of ] \ ^ _ (default ctrl-]).
        #[arg(long, default_value = "ctrl-]", value_parser = parse_detach_key)]
        detach_key: u8,
    },
    /// Live-migrate a running VM to another host daemon.
    Migrate {
        /// VM name or id.
        name: String,
        /// Destination daemon: unix:/path or http://HOST:PORT.
        #[arg(long)]
        to: String,
        /// Bearer token of the destination (TCP).
        #[arg(long, env = "TERN_TO_TOKEN", hide_env_values = true)]
        to_token: Option<String>,
        /// Return once started instead of following the progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// Attach a disk to a stopped VM.
    Attach {
        /// VM name or id.
        name: String,
        /// Disk name or id.
        disk: String,
    },
    /// Detach a disk from a stopped VM.
    Detach {
        /// VM name or id.
        name: String,
        /// Disk name or id.
        disk: String,
    },
    /// Show events (of one VM or of the host).
    Events {
        /// Only this VM.
        name: Option<String>,
        /// Only events after this sequence number.
        #[arg(long, default_value_t = 0)]
        since: i64,
        /// Keep waiting for new events.
        #[arg(long, short)]
        follow: bool,
    },
}

/// `tern volume ...`.
#[derive(Args, Debug)]
pub struct VolumeCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: VolumeAction,
}

#[derive(Subcommand, Debug)]
enum VolumeAction {
    /// Create a disk image in an allowed directory and register it.
    Create {
        /// Name.
        name: String,
        /// Virtual size, e.g. 1G.
        #[arg(long, value_parser = tern_api::parse_size)]
        size: u64,
        /// vhdx or raw.
        #[arg(long, default_value = "vhdx", value_parser = parse_format)]
        format: DiskFormat,
        /// File path (absolute, inside an allowed directory).
        #[arg(long)]
        path: Option<String>,
    },
    /// List disks.
    #[command(alias = "ls")]
    List,
    /// Show one disk.
    Show {
        /// Disk name or id.
        name: String,
    },
    /// Delete a disk and its file.
    #[command(alias = "rm")]
    Delete {
        /// Disk name or id.
        name: String,
    },
    /// Change a disk's virtual size.
    Resize {
        /// Disk name or id.
        name: String,
        /// New size, e.g. 2G.
        #[arg(long, value_parser = tern_api::parse_size)]
        size: u64,
    },
    /// Set storage QoS (normalized 8 KiB IOPS).
    Qos {
        /// Disk name or id.
        name: String,
        /// Upper limit.
        #[arg(long)]
        max_iops: Option<u32>,
        /// Minimum (an event is raised when not met).
        #[arg(long)]
        min_iops: Option<u32>,
    },
}

/// `tern checkpoint ...`.
#[derive(Args, Debug)]
pub struct CheckpointCmd {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    action: CheckpointAction,
}

#[derive(Subcommand, Debug)]
enum CheckpointAction {
    /// Take a checkpoint of a VM.
    Create {
        /// VM name or id.
        vm: String,
        /// Checkpoint name.
        name: String,
    },
    /// List a VM's checkpoints.
    #[command(alias = "ls")]
    List {
        /// VM name or id.
        vm: String,
    },
    /// Delete a checkpoint.
    #[command(alias = "rm")]
    Delete {
        /// VM name or id.
        vm: String,
        /// Checkpoint name or id.
        name: String,
    },
    /// Revert a VM to a checkpoint.
    Apply {
        /// VM name or id.
        vm: String,
        /// Checkpoint name or id.
        name: String,
    },
}

/// `tern host`.
#[derive(Args, Debug)]
pub struct HostCmd {
    #[command(flatten)]
    conn: Conn,
}

fn parse_format(s: &str) -> Result<DiskFormat, String> {
    match s {
        "vhdx" => Ok(DiskFormat::Vhdx),
        "raw" => Ok(DiskFormat::Raw),
        _ => Err(format!("unknown format '{s}': expected vhdx or raw")),
    }
}

fn parse_detach_key(s: &str) -> Result<u8, String> {
    let c = s
        .strip_prefix("ctrl-")
        .or_else(|| s.strip_prefix("^"))
        .filter(|c| c.len() == 1)
        .ok_or_else(|| format!("bad detach key '{s}': expected ctrl-X"))?
        .as_bytes()[0]
        .to_ascii_uppercase();
    match c {
        b'A'..=b'Z' | b'[' | b'\\' | b']' | b'^' | b'_' => Ok(c & 0x1f),
        _ => Err(format!("bad detach key '{s}': expected ctrl-X")),
    }
}

/// A failed command: exit code and one line for stderr.
struct Fail(i32, String);

impl From<ClientError> for Fail {
    fn from(e: ClientError) -> Fail {
        let code = match &e {
            ClientError::BadEndpoint(_) => code::USAGE,
            ClientError::Connect { .. } | ClientError::Timeout(_) => code::UNREACHABLE,
            ClientError::Api { status, .. } | ClientError::Protocol { status, .. } => {
                match status {
                    400 | 413 | 422 => code::INVALID,
                    401 | 403 => code::UNAUTHORIZED,
                    404 => code::NOT_FOUND,
                    409 => code::CONFLICT,
                    501 => code::NOT_IMPLEMENTED,
                    _ => code::FAILED,
                }
            }
            _ => code::FAILED,
        };
        Fail(code, crate::run::chain(&e))
    }
}

type CmdResult = Result<(), Fail>;

fn client(conn: &Conn) -> Result<Client, Fail> {
    let token = match (&conn.token, &conn.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| Fail(code::USAGE, format!("cannot read {}: {e}", f.display())))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let endpoint = match &conn.host {
        Some(h) => Endpoint::parse(h, token)?,
        None => Endpoint::Unix(tern_api::client::default_socket()),
    };
    Ok(Client::new(endpoint))
}

fn print_json<T: Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("API types serialize")
    );
}

fn mib(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}G", bytes >> 30)
    } else {
        format!("{}M", bytes >> 20)
    }
}

fn print_vm_table(vms: &[Vm]) {
    println!(
        "{:<20} {:<10} {:>5} {:>7} {:>8}  GUEST",
        "NAME", "STATE", "VCPUS", "MEMORY", "PID"
    );
    for v in vms {
        println!(
            "{:<20} {:<10} {:>5} {:>7} {:>8}  {}",
            v.name,
            v.state.as_str(),
            v.vcpus,
            mib(v.memory),
            v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            v.guest
        );
    }
}

fn print_vm(v: &Vm) {
    println!("name:     {}", v.name);
    println!("id:       {}", v.id);
    println!("state:    {}", v.state);
    if let Some(r) = &v.reason {
        println!("reason:   {r}");
    }
    println!("vcpus:    {}", v.vcpus);
    println!("memory:   {} ({} bytes)", mib(v.memory), v.memory);
    println!("guest:    {}", v.guest);
    if let Some(p) = v.pid {
        println!("pid:      {p}");
    }
    println!(
        "disks:    {}",
        if v.disks.is_empty() {
            "-".into()
        } else {
            v.disks.join(", ")
        }
    );
    println!("created:  {}", v.created_at);
    println!("updated:  {}", v.updated_at);
}

/// A spinner on stderr while a long request runs (only on a terminal, and
/// not with --json).
fn spinner(json: bool, msg: String) -> Option<indicatif::ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(100));
    Some(pb)
}

async fn vm_op(c: &Client, json: bool, name: &str, action: &str, verb: &str) -> CmdResult {
    let pb = spinner(json, format!("{verb} {name}..."));
    let t = Instant::now();
    let r = c.vm_action(name, action).await;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let vm = r?;
    if json {
        print_json(&vm);
    } else {
        println!(
            "{}: {} ({:.0} ms)",
            vm.name,
            vm.state,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Runs an API command; returns the exit code.
pub fn run(cmd: ApiCommand) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: error: cannot start the runtime: {e}");
            return code::FAILED;
        }
    };
    match rt.block_on(dispatch(cmd)) {
        Ok(()) => code::OK,
        Err(Fail(code, msg)) => {
            eprintln!("tern: error: {msg}");
            code
        }
    }
}

async fn dispatch(cmd: ApiCommand) -> CmdResult {
    match cmd {
        ApiCommand::Vm(v) => vm(v).await,
        ApiCommand::Volume(v) => volume(v).await,
        ApiCommand::Checkpoint(c) => checkpoint(c).await,
        ApiCommand::Host(h) => {
            let c = client(&h.conn)?;
            let info = c.host().await?;
            if h.conn.json {
                print_json(&info);
            } else {
                println!(
                    "host:      {} (ternd {}, API {})",
                    info.hostname, info.version, info.api_version
                );
                println!("daemon:    pid {} at {}", info.pid, c.endpoint());
                println!("vms:       {} ({} with a worker)", info.vms, info.running);
                println!("disk dirs: {}", info.disk_dirs.join(", "));
                let f = &info.features;
                println!(
                    "features:  save/restore {}, migration {}, disks {}, checkpoints {}",
                    yes(f.save_restore),
                    yes(f.migration),
                    yes(f.disks),
                    yes(f.checkpoints)
                );
            }
            Ok(())
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "not yet"
    }
}

async fn vm(cmd: VmCmd) -> CmdResult {
    let c = client(&cmd.conn)?;
    let json = cmd.conn.json;
    match cmd.action {
        VmAction::Create {
            name,
            vcpus,
            memory,
            guest,
            disks,
            start,
        } => {
            let vm = c
                .create_vm(&CreateVm {
                    name: name.clone(),
                    vcpus: Some(vcpus),
                    memory: Some(Size(memory)),
                    guest,
                    disks,
                })
                .await?;
            if start {
                return vm_op(&c, json, &vm.name, "start", "starting").await;
            }
            if json {
                print_json(&vm);
            } else {
                println!("{}: created (id {})", vm.name, vm.id);
            }
        }
        VmAction::List => {
            let vms = c.list_vms().await?;
            if json {
                print_json(&tern_api::VmList { vms });
            } else {
                print_vm_table(&vms);
            }
        }
        VmAction::Show { name } => {
            let vm = c.get_vm(&name).await?;
            if json {
                print_json(&vm);
            } else {
                print_vm(&vm);
            }
        }
        VmAction::Start { name } => vm_op(&c, json, &name, "start", "starting").await?,
        VmAction::Stop { name, force } => {
            let action = if force { "force-stop" } else { "stop" };
            vm_op(&c, json, &name, action, "stopping").await?
        }
        VmAction::Pause { name } => vm_op(&c, json, &name, "pause", "pausing").await?,
        VmAction::Resume { name } => vm_op(&c, json, &name, "resume", "resuming").await?,
        VmAction::Save { name } => vm_op(&c, json, &name, "save", "saving").await?,
        VmAction::Restore { name } => vm_op(&c, json, &name, "restore", "restoring").await?,
        VmAction::Delete { name, force } => {
            if force {
                let vm = c.get_vm(&name).await?;
                if vm.state.has_worker() {
                    c.vm_action(&name, "force-stop").await?;
                }
            }
            c.delete_vm(&name).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }));
            } else {
                println!("{name}: deleted");
            }
        }
        VmAction::Console { name, detach_key } => console(&c, &name, detach_key).await?,
        VmAction::Migrate {
            name,
            to,
            to_token,
            no_wait,
        } => migrate(&c, json, &name, to, to_token, no_wait).await?,
        VmAction::Attach { name, disk } => {
            let vm = c.attach_disk(&name, &disk).await?;
            if json {
                print_json(&vm);
            } else {
                println!("{}: disks {}", vm.name, vm.disks.join(", "));
            }
        }
        VmAction::Detach { name, disk } => {
            let vm = c.detach_disk(&name, &disk).await?;
            if json {
                print_json(&vm);
            } else {
                println!("{}: disk {disk} detached", vm.name);
            }
        }
        VmAction::Events {
            name,
            since,
            follow,
        } => {
            let mut since = since;
            loop {
                let wait = follow.then_some(30);
                let events = c.events(Some(since), name.as_deref(), wait).await?;
                for e in &events {
                    if json {
                        println!("{}", serde_json::to_string(e).expect("serializes"));
                    } else {
                        println!(
                            "{:>6} {} {:<12} {:<14} {}",
                            e.seq,
                            e.time,
                            e.vm.as_deref().unwrap_or("-"),
                            e.kind,
                            e.message
                        );
                    }
                    since = e.seq;
                }
                let _ = std::io::stdout().flush();
                if !follow {
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn migrate(
    c: &Client,
    json: bool,
    name: &str,
    to: String,
    to_token: Option<String>,
    no_wait: bool,
) -> CmdResult {
    let t = Instant::now();
    let mut m = c
        .migrate(
            name,
            &StartMigration {
                to,
                token: to_token,
            },
        )
        .await?;
    let bar = (!json && !no_wait && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(m.total_bytes.max(1));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        pb.set_message(format!("migrating {name}"));
        pb
    });
    while !no_wait && matches!(m.state, MigrationState::Pending | MigrationState::Running) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        m = c.migration(&m.id).await?;
        if let Some(pb) = &bar {
            pb.set_length(m.total_bytes.max(1));
            pb.set_position(m.transferred_bytes);
            pb.set_message(format!("migrating {name} (round {})", m.rounds));
        }
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    if json {
        print_json(&m);
    } else {
        println!(
            "{name}: migration {} {} to {} in {:.0} ms: {} MiB sent in {} rounds, downtime {}",
            m.id,
            format!("{:?}", m.state).to_lowercase(),
            m.peer,
            m.total_ms.unwrap_or(t.elapsed().as_secs_f64() * 1e3),
            m.transferred_bytes >> 20,
            m.rounds,
            m.downtime_ms
                .map(|d| format!("{d:.1} ms"))
                .unwrap_or_else(|| "-".into())
        );
    }
    match m.state {
        MigrationState::Failed | MigrationState::Cancelled => Err(Fail(
            code::FAILED,
            format!(
                "migration of {name} {}: {}",
                if m.state == MigrationState::Failed {
                    "failed"
                } else {
                    "was cancelled"
                },
                m.error.unwrap_or_default()
            ),
        )),
        _ => Ok(()),
    }
}

/// Puts the terminal in raw mode while alive (only when stdin is one).
struct RawMode(Option<rustix::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(old) = rustix::termios::tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = old.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw).is_err()
        {
            return RawMode(None);
        }
        RawMode(Some(old))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                old,
            );
        }
    }
}

/// Bridges stdin/stdout to the VM's serial console until the detach key,
/// the end of stdin, or the end of the VM.
async fn console(c: &Client, name: &str, detach_key: u8) -> CmdResult {
    let ws = c.console(name).await?;
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "Connected to {name}'s console. Detach with Ctrl-{}.\r",
            (detach_key | 0x40) as char
        );
    }
    let _raw = RawMode::enter();
    let (mut tx, mut rx) = ws.split();
    // Stdin is read on a thread: tokio's stdin would keep the runtime from
    // exiting while a read blocks.
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while let Ok(n @ 1..) = std::io::Read::read(&mut stdin, &mut buf) {
            if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                return;
            }
        }
    });
    let mut stdout = std::io::stdout();
    let mut stdin_open = true;
    let end = loop {
        tokio::select! {
            msg = rx.next() => match msg {
                Some(Ok(WsMessage::Binary(b))) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                Some(Ok(WsMessage::Text(t))) => {
                    let _ = stdout.write_all(t.as_bytes());
                    let _ = stdout.flush();
                }
                Some(Ok(WsMessage::Close(f))) => {
                    break f.map(|f| f.reason.to_string()).unwrap_or_else(|| "closed".into());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Fail(code::FAILED, format!("console connection lost: {e}"))),
                None => break "closed".into(),
            },
            data = in_rx.recv(), if stdin_open => match data {
                Some(d) => {
                    if let Some(i) = d.iter().position(|&b| b == detach_key) {
                        if i > 0 {
                            let _ = tx.send(WsMessage::Binary(d[..i].to_vec().into())).await;
                        }
                        let _ = tx.send(WsMessage::Close(None)).await;
                        break "detached".into();
                    }
                    if tx.send(WsMessage::Binary(d.into())).await.is_err() {
                        break "closed".into();
                    }
                }
                // Without input the console goes on showing output.
                None => stdin_open = false,
            },
        }
    };
    drop(_raw);
    eprintln!("\r\n[tern: console of {name}: {end}]");
    Ok(())
}

async fn volume(cmd: VolumeCmd) -> CmdResult {
    let c = client(&cmd.conn)?;
    let json = cmd.conn.json;
    let show = |d: &tern_api::Disk| {
        if json {
            print_json(d);
        } else {
            println!(
                "{}: {} {} at {} (vm {}, max_iops {}, min_iops {})",
                d.name,
                d.format.as_str(),
                mib(d.size),
                d.path,
                d.vm.as_deref().unwrap_or("-"),
                d.qos
                    .max_iops
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                d.qos
                    .min_iops
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
            );
        }
    };
    match cmd.action {
        VolumeAction::Create {
            name,
            size,
            format,
            path,
        } => show(
            &c.create_disk(&CreateDisk {
                name,
                size: Size(size),
                format: Some(format),
                path,
            })
            .await?,
        ),
        VolumeAction::List => {
            let disks = c.list_disks().await?;
            if json {
                print_json(&tern_api::DiskList { disks });
            } else {
                println!(
                    "{:<20} {:<5} {:>8} {:<16} PATH",
                    "NAME", "FMT", "SIZE", "VM"
                );
                for d in disks {
                    println!(
                        "{:<20} {:<5} {:>8} {:<16} {}",
                        d.name,
                        d.format.as_str(),
                        mib(d.size),
                        d.vm.as_deref().unwrap_or("-"),
                        d.path
                    );
                }
            }
        }
        VolumeAction::Show { name } => {
            let d = c
                .list_disks()
                .await?
                .into_iter()
                .find(|d| d.name == name || d.id == name)
                .ok_or_else(|| Fail(code::NOT_FOUND, format!("no disk named '{name}'")))?;
            show(&d);
        }
        VolumeAction::Delete { name } => {
            c.delete_disk(&name).await?;
            if json {
                print_json(&serde_json::json!({ "deleted": name }));
            } else {
                println!("{name}: deleted");
            }
        }
        VolumeAction::Resize { name, size } => show(&c.resize_disk(&name, size).await?),
        VolumeAction::Qos {
            name,
            max_iops,
            min_iops,
        } => show(
            &c.set_disk_qos(
                &name,
                &DiskQos {
                    max_iops,
                    min_iops,
                    max_bw: None,
                },
            )
            .await?,
        ),
    }
    Ok(())
}

async fn checkpoint(cmd: CheckpointCmd) -> CmdResult {
    let c = client(&cmd.conn)?;
    let json = cmd.conn.json;
    match cmd.action {
        CheckpointAction::Create { vm, name } => {
            let cp = c.create_checkpoint(&vm, &name).await?;
            if json {
                print_json(&cp);
            } else {
                println!("{vm}: checkpoint {} taken", cp.name);
            }
        }
        CheckpointAction::List { vm } => {
            let cps = c.list_checkpoints(&vm).await?;
            if json {
                print_json(&tern_api::CheckpointList { checkpoints: cps });
            } else {
                println!("{:<20} {:<18} CREATED", "NAME", "ID");
                for cp in cps {
                    println!("{:<20} {:<18} {}", cp.name, cp.id, cp.created_at);
                }
            }
        }
        CheckpointAction::Delete { vm, name } => {
            c.delete_checkpoint(&vm, &name).await?;
            if !json {
                println!("{vm}: checkpoint {name} deleted");
            }
        }
        CheckpointAction::Apply { vm, name } => {
            let v = c.apply_checkpoint(&vm, &name).await?;
            if json {
                print_json(&v);
            } else {
                println!("{}: reverted to {name} ({})", v.name, v.state);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detach_keys_parse() {
        assert_eq!(parse_detach_key("ctrl-]"), Ok(0x1d));
        assert_eq!(parse_detach_key("ctrl-a"), Ok(0x01));
        assert_eq!(parse_detach_key("^Q"), Ok(0x11));
        assert!(parse_detach_key("x").is_err());
        assert!(parse_detach_key("ctrl-1").is_err());
    }

    #[test]
    fn statuses_map_to_exit_codes() {
        let api = |status| {
            Fail::from(ClientError::Api {
                status,
                code: "x".into(),
                message: "m".into(),
            })
            .0
        };
        assert_eq!(api(400), code::INVALID);
        assert_eq!(api(401), code::UNAUTHORIZED);
        assert_eq!(api(404), code::NOT_FOUND);
        assert_eq!(api(409), code::CONFLICT);
        assert_eq!(api(501), code::NOT_IMPLEMENTED);
        assert_eq!(api(500), code::FAILED);
    }
}
