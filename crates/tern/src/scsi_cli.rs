//! `tern worker scsi-add|scsi-remove|scsi-resize|dvd-insert|dvd-eject`: the
//! running VM's SCSI controller, through the worker's control socket.

use std::path::PathBuf;

use clap::Subcommand;
use tern_worker_proto::requests::{DvdEject, DvdInsert, ScsiAdd, ScsiRemove, ScsiResize};

use tern_api::parse_size;

use crate::run::parse_scsi;

/// The SCSI subcommands of `tern worker`.
#[derive(Subcommand, Debug)]
pub enum ScsiCommand {
    /// Hot-add a SCSI disk or DVD drive: SPEC as `tern run --scsi`
    /// (its lun=N is required).
    ScsiAdd {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// disk=IMAGE[,ro][,shared][,format=raw|vhdx],lun=N or dvd=[ISO],lun=N.
        #[arg(value_parser = parse_scsi)]
        spec: tern_worker_proto::ScsiLunSpec,
    },
    /// Hot-remove a SCSI LUN.
    ScsiRemove {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// The LUN.
        lun: u16,
    },
    /// Grow or shrink a SCSI disk of the running VM.
    ScsiResize {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// The LUN.
        lun: u16,
        /// New size (e.g. 2G; a multiple of 512).
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// Put an ISO into a SCSI DVD drive.
    DvdInsert {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// The drive's LUN.
        lun: u16,
        /// The ISO image.
        iso: PathBuf,
    },
    /// Take the medium out of a SCSI DVD drive (refused while the guest
    /// prevents removal, unless --force).
    DvdEject {
        /// The worker's control socket.
        #[arg(long)]
        control: PathBuf,
        /// The drive's LUN.
        lun: u16,
        /// Eject even while the guest prevents it.
        #[arg(long)]
        force: bool,
    },
}

fn absolute(p: PathBuf) -> PathBuf {
    std::path::absolute(&p).unwrap_or(p)
}

/// Runs one; returns the exit code.
pub fn run(cmd: ScsiCommand) -> i32 {
    use crate::snapshot::call;
    match cmd {
        ScsiCommand::ScsiAdd { control, mut spec } => {
            spec.path = spec.path.map(absolute);
            call(&control, ScsiAdd { lun: spec })
        }
        ScsiCommand::ScsiRemove { control, lun } => call(&control, ScsiRemove { lun }),
        ScsiCommand::ScsiResize { control, lun, size } => call(&control, ScsiResize { lun, size }),
        ScsiCommand::DvdInsert { control, lun, iso } => call(
            &control,
            DvdInsert {
                lun,
                path: absolute(iso),
            },
        ),
        ScsiCommand::DvdEject {
            control,
            lun,
            force,
        } => call(&control, DvdEject { lun, force }),
    }
}
