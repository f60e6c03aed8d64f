//! `tern disk`: create, inspect, check, resize, merge and convert disks.
//!
//! Every command prints a human summary, or one JSON object with `--json`.
//! Exit codes: 0 success; 64 bad arguments; 65 the disk is damaged, a
//! check found errors, or a shrink was refused; 66 a file is missing; 70
//! anything else.

use crate::exit_code::{NO_INPUT, OK, SOFTWARE, USAGE};
use anyhow::{anyhow, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{json, Value};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tern_api::parse_size;
use vhdx::check::Severity;
use vhdx::convert::Target;
use vhdx::{CreateOptions, Disk, DiskType, Shrink};

/// The disk is damaged, a check found errors, or a shrink was refused (`EX_DATAERR`).
const DATA_ERR: i32 = 65;

/// `tern disk` subcommands.
#[derive(Subcommand)]
pub enum DiskCommand {
    /// Create a VHDX: fixed, dynamic, or differencing over a parent.
    Create(CreateArgs),
    /// Show a disk's parameters, allocation and parent.
    Info(InfoArgs),
    /// Check a VHDX for damage; with --repair, fix what can be fixed.
    Check(CheckArgs),
    /// Grow or shrink a VHDX or raw disk.
    Resize(ResizeArgs),
    /// Merge a differencing VHDX into its parent (then delete the child).
    Merge(MergeArgs),
    /// Convert between raw, fixed VHDX and dynamic VHDX.
    Convert(ConvertArgs),
}

/// Kinds of VHDX `create` makes.
#[derive(Clone, Copy, ValueEnum)]
pub enum CreateType {
    /// Blocks allocated on first write.
    Dynamic,
    /// Every block allocated now.
    Fixed,
    /// Reads what is not written here from --parent.
    Differencing,
}

/// Formats `convert` writes.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A raw (sparse) image.
    Raw,
    /// A fixed VHDX.
    Fixed,
    /// A dynamic VHDX.
    Dynamic,
}

/// `tern disk create`.
#[derive(Args)]
pub struct CreateArgs {
    /// The new file (must not exist).
    pub path: PathBuf,
    /// Virtual size (e.g. 10G); not for differencing disks.
    #[arg(long)]
    pub size: Option<String>,
    /// Disk type (differencing when --parent is given).
    #[arg(long = "type", value_enum)]
    pub disk_type: Option<CreateType>,
    /// Parent of a differencing disk.
    #[arg(long)]
    pub parent: Option<PathBuf>,
    /// Block size, 1M to 256M, a power of two (default 32M; 2M differencing).
    #[arg(long)]
    pub block_size: Option<String>,
    /// Logical sector size: 512 or 4096.
    #[arg(long, default_value_t = 512)]
    pub logical_sector: u32,
    /// Physical sector size: 512 or 4096.
    #[arg(long, default_value_t = 4096)]
    pub physical_sector: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tern disk info`.
#[derive(Args)]
pub struct InfoArgs {
    /// The disk.
    pub path: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tern disk check`.
#[derive(Args)]
pub struct CheckArgs {
    /// The disk.
    pub path: PathBuf,
    /// Fix what can be fixed (replay the log, rewrite bad header and region
    /// table copies, clear BAT entries that point at nothing valid).
    #[arg(long)]
    pub repair: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tern disk resize`.
#[derive(Args)]
pub struct ResizeArgs {
    /// The disk (VHDX or raw).
    pub path: PathBuf,
    /// The new virtual size (e.g. 20G).
    pub size: String,
    /// When shrinking: the blocks beyond the new end are free; drop them
    /// even if they hold data.
    #[arg(long)]
    pub discard_beyond_end: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tern disk merge`.
#[derive(Args)]
pub struct MergeArgs {
    /// The differencing disk to merge into its parent.
    pub child: PathBuf,
    /// Keep the child file (it no longer matches its parent).
    #[arg(long)]
    pub keep_child: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `tern disk convert`.
#[derive(Args)]
pub struct ConvertArgs {
    /// Source: raw or any VHDX (a differencing chain is flattened).
    pub src: PathBuf,
    /// Destination (must not exist).
    pub dst: PathBuf,
    /// Destination format.
    #[arg(long, value_enum)]
    pub format: Format,
    /// Block size of a VHDX destination.
    #[arg(long)]
    pub block_size: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// An error with the exit code it maps to.
struct Failure {
    code: i32,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        let code = error
            .chain()
            .find_map(|e| e.downcast_ref::<vhdx::Error>().map(code_for))
            .unwrap_or(SOFTWARE);
        Failure { code, error }
    }
}

fn code_for(e: &vhdx::Error) -> i32 {
    use vhdx::Error as E;
    match e {
        E::InvalidOption(_) => USAGE,
        E::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => NO_INPUT,
        E::ParentNotFound { .. } => NO_INPUT,
        E::Header(_)
        | E::Region(_)
        | E::Metadata(_)
        | E::Bat(_)
        | E::Log(_)
        | E::TooShort(_)
        | E::OutsideFile { .. }
        | E::ShrinkWouldDiscard { .. }
        | E::ParentMismatch { .. }
        | E::NotDifferencing => DATA_ERR,
        _ => SOFTWARE,
    }
}

fn usage(msg: String) -> Failure {
    Failure {
        code: USAGE,
        error: anyhow!(msg),
    }
}

/// Runs a disk subcommand and returns the process exit code.
pub fn run(cmd: DiskCommand) -> i32 {
    let json = match &cmd {
        DiskCommand::Create(a) => a.json,
        DiskCommand::Info(a) => a.json,
        DiskCommand::Check(a) => a.json,
        DiskCommand::Resize(a) => a.json,
        DiskCommand::Merge(a) => a.json,
        DiskCommand::Convert(a) => a.json,
    };
    let result = match cmd {
        DiskCommand::Create(a) => create(a),
        DiskCommand::Info(a) => info(a),
        DiskCommand::Check(a) => check(a),
        DiskCommand::Resize(a) => resize(a),
        DiskCommand::Merge(a) => merge(a),
        DiskCommand::Convert(a) => convert(a),
    };
    match result {
        Ok((code, value, text)) => {
            if json {
                println!("{value}");
            } else {
                print!("{text}");
            }
            code
        }
        Err(f) => {
            if json {
                println!(
                    "{}",
                    json!({"ok": false, "error": format!("{:#}", f.error)})
                );
            }
            eprintln!("error: {:#}", f.error);
            f.code
        }
    }
}

type Outcome = Result<(i32, Value, String), Failure>;

fn size_arg(what: &str, s: &str) -> Result<u64, Failure> {
    parse_size(s).map_err(|e| usage(format!("{what}: {e}")))
}

fn block_size_arg(s: &Option<String>) -> Result<Option<u32>, Failure> {
    s.as_ref()
        .map(|s| {
            let v = size_arg("--block-size", s)?;
            u32::try_from(v).map_err(|_| usage(format!("--block-size {s} is too large")))
        })
        .transpose()
}

fn create(a: CreateArgs) -> Outcome {
    let kind = match (a.disk_type, &a.parent) {
        (Some(CreateType::Differencing), None) => {
            return Err(usage("a differencing disk needs --parent".into()))
        }
        (Some(CreateType::Fixed | CreateType::Dynamic), Some(_)) => {
            return Err(usage("--parent makes a differencing disk".into()))
        }
        (_, Some(_)) => DiskType::Differencing,
        (Some(CreateType::Fixed), None) => DiskType::Fixed,
        _ => DiskType::Dynamic,
    };
    let size = match (&a.size, kind) {
        (Some(_), DiskType::Differencing) => {
            return Err(usage(
                "a differencing disk takes its parent's size: drop --size".into(),
            ))
        }
        (Some(s), _) => size_arg("--size", s)?,
        (None, DiskType::Differencing) => 0,
        (None, _) => return Err(usage("--size is required".into())),
    };
    let opts = CreateOptions {
        size,
        disk_type: kind,
        block_size: block_size_arg(&a.block_size)?,
        logical_sector_size: a.logical_sector,
        physical_sector_size: a.physical_sector,
        parent: a.parent.clone(),
    };
    let d =
        vhdx::create(&a.path, &opts).with_context(|| format!("creating {}", a.path.display()))?;
    let i = d.info();
    d.close().context("closing the new disk")?;
    let text = format!(
        "created {} ({} VHDX, {} bytes, {} byte blocks)\n",
        a.path.display(),
        i.disk_type.name(),
        i.virtual_size,
        i.block_size
    );
    Ok((OK, info_json(&a.path, &i), text))
}

fn info_json(path: &Path, i: &vhdx::Info) -> Value {
    json!({
        "ok": true,
        "path": path,
        "format": "vhdx",
        "type": i.disk_type.name(),
        "virtual_size": i.virtual_size,
        "block_size": i.block_size,
        "logical_sector_size": i.logical_sector_size,
        "physical_sector_size": i.physical_sector_size,
        "disk_id": i.disk_id.to_string(),
        "data_write_guid": i.data_write_guid.to_string(),
        "file_size": i.file_size,
        "total_blocks": i.total_blocks,
        "allocated_blocks": i.allocated_blocks,
        "log_entries_to_replay": i.log_entries_replayed,
        "parent": i.parent_path,
        "parent_locator": i.parent_locator.as_ref().map(|l| {
            l.entries.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>()
        }),
    })
}

fn is_vhdx(path: &Path) -> Result<bool, Failure> {
    vhdx::convert::is_vhdx(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(Failure::from)
}

fn info(a: InfoArgs) -> Outcome {
    if !is_vhdx(&a.path)? {
        let len = std::fs::metadata(&a.path)
            .with_context(|| format!("reading {}", a.path.display()))?
            .len();
        let v = json!({"ok": true, "path": a.path, "format": "raw", "virtual_size": len});
        return Ok((OK, v, format!("{}: raw, {len} bytes\n", a.path.display())));
    }
    let d = Disk::open(&a.path, false).with_context(|| format!("opening {}", a.path.display()))?;
    let i = d.info();
    let mut t = format!(
        "{}: {} VHDX\n  virtual size   {} bytes\n  block size     {} bytes\n  sectors        {} logical, {} physical\n  allocated      {} of {} blocks\n  file size      {} bytes\n  disk id        {}\n",
        a.path.display(),
        i.disk_type.name(),
        i.virtual_size,
        i.block_size,
        i.logical_sector_size,
        i.physical_sector_size,
        i.allocated_blocks,
        i.total_blocks,
        i.file_size,
        i.disk_id
    );
    if let Some(p) = &i.parent_path {
        t += &format!("  parent         {}\n", p.display());
    }
    if i.log_entries_replayed > 0 {
        t += &format!(
            "  log            {} entries to replay (not closed cleanly; shown replayed)\n",
            i.log_entries_replayed
        );
    }
    for p in d.problems() {
        t += &format!("  warning: {p}\n");
    }
    Ok((OK, info_json(&a.path, &i), t))
}

fn check(a: CheckArgs) -> Outcome {
    let r = vhdx::check::check(&a.path, a.repair)
        .with_context(|| format!("checking {}", a.path.display()))?;
    let errors = r.errors();
    let problems: Vec<Value> = r
        .problems
        .iter()
        .map(|p| {
            json!({
                "severity": if p.severity == Severity::Error { "error" } else { "warning" },
                "message": p.message,
                "repaired": p.repaired,
            })
        })
        .collect();
    let v = json!({
        "ok": errors == 0,
        "path": a.path,
        "errors": errors,
        "problems": problems,
        "allocated_blocks": r.allocated_blocks,
        "leaked_bytes": r.leaked_bytes,
    });
    let mut t = String::new();
    for p in &r.problems {
        let sev = if p.severity == Severity::Error {
            "error"
        } else {
            "warning"
        };
        let fixed = if p.repaired { " (repaired)" } else { "" };
        t += &format!("{sev}: {}{fixed}\n", p.message);
    }
    t += &if errors == 0 {
        format!("{}: no errors\n", a.path.display())
    } else {
        format!(
            "{}: {errors} error(s){}\n",
            a.path.display(),
            if a.repair {
                " remain"
            } else {
                "; --repair may fix them"
            }
        )
    };
    Ok((if errors == 0 { OK } else { DATA_ERR }, v, t))
}

fn resize(a: ResizeArgs) -> Outcome {
    let new = size_arg("size", &a.size)?;
    let policy = if a.discard_beyond_end {
        Shrink::Discard
    } else {
        Shrink::Refuse
    };
    let old;
    if is_vhdx(&a.path)? {
        let mut d =
            Disk::open(&a.path, true).with_context(|| format!("opening {}", a.path.display()))?;
        old = d.virtual_size();
        d.resize(new, policy)
            .with_context(|| format!("resizing {}", a.path.display()))?;
        d.close().context("closing")?;
    } else {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&a.path)
            .with_context(|| format!("opening {}", a.path.display()))?;
        old = f.metadata().context("reading size")?.len();
        if new < old && policy == Shrink::Refuse {
            let mut buf = vec![0u8; 1 << 20];
            let mut pos = new;
            while pos < old {
                let n = (old - pos).min(buf.len() as u64) as usize;
                f.read_exact_at(&mut buf[..n], pos).context("reading")?;
                if let Some(i) = buf[..n].iter().position(|&b| b != 0) {
                    return Err(vhdx::Error::ShrinkWouldDiscard {
                        new_size: new,
                        offset: pos + i as u64,
                    })
                    .context("resizing raw disk")
                    .map_err(Failure::from);
                }
                pos += n as u64;
            }
        }
        f.set_len(new).context("resizing")?;
        f.sync_all().context("flushing")?;
    }
    let v = json!({"ok": true, "path": a.path, "old_size": old, "new_size": new});
    Ok((
        OK,
        v,
        format!("{}: {old} -> {new} bytes\n", a.path.display()),
    ))
}

fn merge(a: MergeArgs) -> Outcome {
    let r =
        vhdx::merge::merge(&a.child).with_context(|| format!("merging {}", a.child.display()))?;
    if !a.keep_child {
        std::fs::remove_file(&a.child)
            .with_context(|| format!("removing merged child {}", a.child.display()))?;
    }
    let v = json!({
        "ok": true,
        "child": a.child,
        "parent": r.parent,
        "bytes_copied": r.bytes_copied,
        "bytes_zeroed": r.bytes_zeroed,
        "child_removed": !a.keep_child,
    });
    let t = format!(
        "merged {} into {} ({} bytes copied, {} zeroed){}\n",
        a.child.display(),
        r.parent.display(),
        r.bytes_copied,
        r.bytes_zeroed,
        if a.keep_child { "" } else { "; child removed" }
    );
    Ok((OK, v, t))
}

fn convert(a: ConvertArgs) -> Outcome {
    let to = match a.format {
        Format::Raw => Target::Raw,
        Format::Fixed => Target::Fixed,
        Format::Dynamic => Target::Dynamic,
    };
    let r = vhdx::convert::convert(&a.src, &a.dst, to, block_size_arg(&a.block_size)?)
        .with_context(|| format!("converting {} to {}", a.src.display(), a.dst.display()))?;
    let v = json!({
        "ok": true,
        "src": a.src,
        "dst": a.dst,
        "virtual_size": r.virtual_size,
        "bytes_written": r.bytes_written,
    });
    let t = format!(
        "converted {} -> {} ({} bytes, {} written)\n",
        a.src.display(),
        a.dst.display(),
        r.virtual_size,
        r.bytes_written
    );
    Ok((OK, v, t))
}
