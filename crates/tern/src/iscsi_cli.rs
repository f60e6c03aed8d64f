//! `tern iscsi serve`: exports a disk over iSCSI in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use serde::Serialize;
use tern_scsi::{DiskConfig, ScsiTarget};

use crate::exit_code;

/// iSCSI target commands.
#[derive(Subcommand)]
pub(crate) enum IscsiCommand {
    /// Export DISK (raw or VHDX) as LUN 0 of an iSCSI target until killed.
    Serve(ServeArgs),
}

/// `tern iscsi serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The disk image (format by name: .vhdx or raw).
    disk: PathBuf,
    /// Address to listen on (port 0: any; the real one is printed).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// Target name; default iqn.2026-12.org.tern:<file stem>.
    #[arg(long, value_name = "IQN")]
    iqn: Option<String>,
    /// An initiator allowed to log in (repeat; none: any initiator).
    #[arg(long = "allow", value_name = "IQN")]
    allow: Vec<String>,
    /// Require one-way CHAP with these credentials.
    #[arg(long, value_name = "USER:SECRET")]
    chap: Option<String>,
    /// Export read-only.
    #[arg(long)]
    read_only: bool,
    /// Keep persistent reservations in a file beside the image, shared with
    /// every Tern process that opens it (default: in this process).
    #[arg(long)]
    shared: bool,
    /// Once listening, write the address and IQN (JSON) to FILE, atomically.
    #[arg(long, value_name = "FILE")]
    listening_file: Option<PathBuf>,
}

/// What `--listening-file` holds.
#[derive(Serialize)]
struct ListeningDoc {
    version: u32,
    address: SocketAddr,
    iqn: String,
}

pub(crate) fn run(cmd: IscsiCommand) -> i32 {
    match cmd {
        IscsiCommand::Serve(args) => match serve(args) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("tern: error: {e:#}");
                exit_code::UNAVAILABLE
            }
        },
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let stem = args
        .disk
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "disk".into());
    let iqn = args.iqn.unwrap_or_else(|| tern_iscsi::default_iqn(&stem));
    tern_iscsi::check_name(&iqn)?;
    for a in &args.allow {
        tern_iscsi::check_name(a)?;
    }
    let chap = args
        .chap
        .as_deref()
        .map(tern_iscsi::parse_chap)
        .transpose()?;
    let backend =
        tern_block::open(&tern_block::OpenOptions::new(&args.disk).read_only(args.read_only))
            .map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot open {}", args.disk.display()))
            })?;
    let scsi = Arc::new(ScsiTarget::new());
    let mut cfg = DiskConfig::new(backend);
    if args.shared {
        cfg.reservations = Some(Arc::new(tern_scsi::store::FileStore::for_image(&args.disk)));
    }
    scsi.add_disk(0, cfg)?;
    let export = tern_iscsi::Export {
        iqn: iqn.clone(),
        allowed: args.allow,
        chap,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot listen on {}", args.listen))
            })?;
        let address = listener.local_addr()?;
        if let Some(path) = &args.listening_file {
            let doc = ListeningDoc {
                version: 1,
                address,
                iqn: iqn.clone(),
            };
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec(&doc)?)?;
            std::fs::rename(&tmp, path)?;
        }
        println!("{iqn}");
        eprintln!("tern: iSCSI target {iqn} listening on {address}");
        tern_iscsi::Target::new(export, scsi)
            .serve(listener)
            .await?;
        Ok(())
    })
}
