//! SCSI target emulation over Tern's block backends: what a virtio-scsi
//! controller and an iSCSI target both drive. No KVM, no virtio here.
//!
//! A [`ScsiTarget`] holds logical units by number, disks over any
//! [`tern_block::BlockBackend`] and DVD drives over ISO images, and runs
//! one command at a time per call: [`ScsiTarget::execute`] takes the
//! initiator's [`NexusId`], the LUN, the CDB, the data-out bytes and the
//! size of the data-in buffer, and returns a [`Response`] (status, sense
//! data, data-in, residual). A transport copies data between its buffers
//! (guest descriptors, iSCSI PDUs) and these slices; it keeps its own task
//! management (ABORT TASK, LUN RESET map to dropping its queued requests
//! and [`ScsiTarget::reset`]).
//!
//! Every CDB is checked before it runs ([`cdb`]): the operation code, each
//! reserved bit (INVALID FIELD IN CDB with the field pointer), the values
//! of each field, LBAs against the capacity, transfer lengths against the
//! block limits and the transport's buffers. A bad command gets CHECK
//! CONDITION with fixed-format sense data, or descriptor format when the
//! initiator set D_SENSE in the control mode page; nothing an initiator
//! sends makes the target panic (the `scsi_cdb` fuzz target and
//! [`fuzzing`] check this).
//!
//! # Emulated
//!
//! - **SPC-4** (all units): TEST UNIT READY, REQUEST SENSE (fixed and
//!   descriptor, 6.39), INQUIRY with standard data and VPD pages 00h, 80h
//!   (unit serial), 83h (NAA 3 and T10 vendor id designators derived from
//!   the serial, 7.8.6), REPORT LUNS (6.33, also to LUNs that do not
//!   exist), REPORT SUPPORTED OPERATION CODES (6.35, all and one, with
//!   the usage masks the parser checks), MODE SENSE/SELECT(6/10) (6.11-
//!   6.14) with current, changeable and default values.
//! - **Unit attentions** (SAM-5 5.14) per I_T nexus: POWER ON (29/00) at a
//!   nexus's first command and after [`ScsiTarget::reset`], CAPACITY DATA
//!   HAS CHANGED (2A/09), REPORTED LUNS DATA HAS CHANGED (3F/0E) on hot
//!   add/remove, MEDIUM MAY HAVE CHANGED (28/00), MODE PARAMETERS CHANGED
//!   (2A/01), RESERVATIONS PREEMPTED/RELEASED and REGISTRATIONS PREEMPTED
//!   (2A/03-05). INQUIRY, REPORT LUNS and REQUEST SENSE run past them
//!   (REQUEST SENSE reports and clears one, REPORT LUNS clears 3F/0E);
//!   UA_INTLCK_CTRL is 00b, so a CHECK CONDITION reports and clears one.
//! - **Disks (SBC-4)**: READ CAPACITY(10/16) (LBPME when UNMAP is offered),
//!   READ and WRITE(6/10/12/16) with FUA (a flush before GOOD; without WCE
//!   every write is flushed), VERIFY(10/16) with BYTCHK 00b/01b/11b
//!   (MISCOMPARE with the offset), SYNCHRONIZE CACHE(10/16), UNMAP,
//!   WRITE SAME(10/16) with UNMAP and NDOB, VPD B0h (block limits), B1h
//!   (non-rotating), B2h (LBPU, LBPWS, LBPWS10), the caching (08h,
//!   WCE changeable) and control (0Ah, D_SENSE changeable) mode pages,
//!   START STOP UNIT (power conditions accepted, no eject). A read-only
//!   backend is write protected (WP in MODE SENSE; writes get DATA
//!   PROTECT / WRITE PROTECTED).
//! - **DVD drives (MMC-6)** on ISO images (2048-byte blocks, one data
//!   track): INQUIRY type 05h with RMB, READ CAPACITY, READ(10/12), READ
//!   TOC/PMA/ATIP formats 0 and 1 (LBA and MSF), GET CONFIGURATION (profile
//!   list with DVD-ROM, core, morphing, removable medium, random readable,
//!   DVD read), GET EVENT STATUS NOTIFICATION (polled; media class: new
//!   media, media removal, eject request), READ DISC INFORMATION, MODE
//!   SENSE capabilities page 2Ah, START STOP UNIT (LoEj eject and load),
//!   PREVENT ALLOW MEDIUM REMOVAL (an eject while prevented fails with
//!   53/02), NOT READY 3A/01 or 3A/02 without a medium; host-side
//!   [`ScsiTarget::insert_medium`] and [`ScsiTarget::eject_medium`].
//! - **Persistent reservations (SPC-4 5.13, 6.15, 6.16)**: [`pr`]. PR IN
//!   READ KEYS, READ RESERVATION, REPORT CAPABILITIES, READ FULL STATUS;
//!   PR OUT REGISTER, REGISTER AND IGNORE EXISTING KEY, RESERVE, RELEASE,
//!   CLEAR, PREEMPT, PREEMPT AND ABORT; all six types, the generation,
//!   APTPL; every command checked against the reservation (RESERVATION
//!   CONFLICT). The state sits in a [`store::ReservationStore`]: in memory
//!   or in a file beside the image that every worker opening it shares.
//! - **Target**: hot add/remove of LUNs, online resize, a versioned saved
//!   state ([`state::TargetSaved`]) apart from the runtime types.
//!
//! # Not emulated
//!
//! Protection information (RDPROTECT/WRPROTECT are refused), COMPARE AND
//! WRITE, XCOPY/ODX, GET LBA STATUS, ALUA (TPGS is 0), the obsolete
//! RESERVE/RELEASE(6/10), REGISTER AND MOVE, SPEC_I_PT and ALL_TG_PT (one
//! target port), saved mode pages, log pages, self-test, ACA (NACA is
//! refused), linked commands, asynchronous event notification; on DVDs
//! writing, audio, CD formats of READ TOC beyond 0 and 1, READ CD, MECHANISM
//! STATUS, and the power-management and timeout feature descriptors.
//! Block size is 512 bytes for disks.

pub mod cdb;
mod disk;
pub mod dvd;
pub mod fuzzing;
pub mod inquiry;
pub mod mode;
pub mod nexus;
pub mod pr;
pub mod response;
pub mod sense;
pub mod state;
pub mod store;
pub mod target;
pub mod ua;

use std::path::Path;
use std::sync::Arc;

pub use nexus::NexusId;
pub use response::{Response, Status};
pub use target::{DiskConfig, DvdConfig, ScsiTarget, TargetError};

/// Opens an ISO image read-only as a DVD medium (shared lock: many drives
/// may read one image).
pub fn open_iso(path: &Path) -> Result<Arc<dyn tern_block::BlockBackend>, tern_block::BlockError> {
    Ok(Arc::new(tern_block::raw::RawDisk::open(path, true)?))
}
