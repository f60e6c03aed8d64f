//! The CDB parser: bytes from an initiator into one typed [`Command`].
//!
//! Every supported command has an entry in [`COMMANDS`]: its operation
//! code (and service action), CDB length and the *usage mask*, the bits an
//! initiator may set in each CDB byte. A set bit outside the mask is a
//! reserved (or unsupported) field and fails with INVALID FIELD IN CDB
//! pointing at that byte and bit; the same masks are what REPORT SUPPORTED
//! OPERATION CODES returns (SPC-4 6.35.3). The typed decode then checks the
//! values (page codes, service actions, formats). Checks that need the
//! unit (LBA ranges, transfer limits) happen where the command runs.

use crate::sense::Sense;

mod table;
pub use self::table::{has_service_action, lookup, op, CommandInfo, UnitKind, COMMANDS};

/// MODE SENSE's page control (SPC-4 6.11.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    /// Current values.
    Current,
    /// Which bits MODE SELECT may change.
    Changeable,
    /// Default values.
    Default,
    /// Saved values (not supported: nothing is saved).
    Saved,
}

/// VERIFY's BYTCHK (SBC-4 5.31).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteCheck {
    /// Check the medium only.
    None,
    /// Compare with as many blocks of data-out.
    All,
    /// Compare each block with one block of data-out.
    One,
}

/// READ TOC's formats this target answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TocFormat {
    /// Format 0: the table of contents.
    Toc,
    /// Format 1: multi-session information.
    SessionInfo,
}

/// GET CONFIGURATION's RT field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigRequest {
    /// Every feature from the starting one.
    All,
    /// The current features from the starting one.
    Current,
    /// Just the starting feature.
    One,
}

/// PERSISTENT RESERVE IN service actions (SPC-4 6.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrInAction {
    /// READ KEYS.
    ReadKeys,
    /// READ RESERVATION.
    ReadReservation,
    /// REPORT CAPABILITIES.
    ReportCapabilities,
    /// READ FULL STATUS.
    ReadFullStatus,
}

/// PERSISTENT RESERVE OUT service actions (SPC-4 6.16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrOutAction {
    /// REGISTER.
    Register,
    /// RESERVE.
    Reserve,
    /// RELEASE.
    Release,
    /// CLEAR.
    Clear,
    /// PREEMPT.
    Preempt,
    /// PREEMPT AND ABORT.
    PreemptAndAbort,
    /// REGISTER AND IGNORE EXISTING KEY.
    RegisterAndIgnore,
}

/// A parsed, checked CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// Descriptor format asked for.
        desc: bool,
        /// Allocation length.
        alloc: u32,
    },
    /// INQUIRY.
    Inquiry {
        /// A VPD page rather than standard data.
        evpd: bool,
        /// The VPD page.
        page: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// MODE SENSE(6) and (10).
    ModeSense {
        /// What it asks for (form, descriptors, page control, page).
        req: crate::mode::SenseRequest,
        /// Allocation length.
        alloc: u32,
    },
    /// MODE SELECT(6) and (10).
    ModeSelect {
        /// The 10-byte form.
        ten: bool,
        /// Save pages (not supported).
        sp: bool,
        /// Parameter list length.
        len: u32,
    },
    /// START STOP UNIT.
    StartStopUnit {
        /// Power condition (0: use START and LOEJ).
        power_condition: u8,
        /// Load or eject.
        loej: bool,
        /// Start (load) rather than stop (eject).
        start: bool,
    },
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllow {
        /// Prevent rather than allow.
        prevent: bool,
    },
    /// READ CAPACITY(10).
    ReadCapacity10,
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// Allocation length.
        alloc: u32,
    },
    /// READ(6/10/12/16).
    Read {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// WRITE(6/10/12/16).
    Write {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access: durable before GOOD.
        fua: bool,
    },
    /// VERIFY(10/16).
    Verify {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// What to compare.
        bytchk: ByteCheck,
    },
    /// SYNCHRONIZE CACHE(10/16).
    SynchronizeCache {
        /// First block.
        lba: u64,
        /// Blocks (0: to the end).
        blocks: u32,
    },
    /// WRITE SAME(10/16).
    WriteSame {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Unmap the blocks if the data allows it.
        unmap: bool,
        /// No data-out buffer: zeros.
        ndob: bool,
    },
    /// UNMAP.
    Unmap {
        /// Parameter list length.
        len: u32,
    },
    /// READ TOC/PMA/ATIP.
    ReadToc {
        /// Addresses in minute/second/frame.
        msf: bool,
        /// Which format.
        format: TocFormat,
        /// Starting track (format 0).
        track: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// GET CONFIGURATION.
    GetConfiguration {
        /// Which features.
        rt: ConfigRequest,
        /// Starting feature number.
        start: u16,
        /// Allocation length.
        alloc: u32,
    },
    /// GET EVENT STATUS NOTIFICATION (polled).
    GetEventStatus {
        /// Notification class request bits.
        classes: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// READ DISC INFORMATION (standard disc information).
    ReadDiscInformation {
        /// Allocation length.
        alloc: u32,
    },
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action.
        action: PrInAction,
        /// Allocation length.
        alloc: u32,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut {
        /// Service action.
        action: PrOutAction,
        /// SCOPE field (checked by the service actions that use it).
        scope: u8,
        /// TYPE field (checked by the service actions that use it).
        pr_type: u8,
        /// Parameter list length.
        len: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT.
        select: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes {
        /// Include timeout descriptors.
        rctd: bool,
        /// Reporting options (0: all, 1-3: one command).
        options: u8,
        /// Requested operation code.
        opcode: u8,
        /// Requested service action.
        sa: u16,
        /// Allocation length.
        alloc: u32,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(v)
}

/// Recognizes a CDB (`cdb` may be longer than the command: transports pad
/// it) and checks the bits of every byte against the command's usage mask.
pub fn identify(cdb: &[u8]) -> Result<&'static CommandInfo, Sense> {
    let Some(&opcode) = cdb.first() else {
        return Err(Sense::invalid_opcode());
    };
    let sa = cdb.get(1).map(|b| b & 0x1F);
    let info = match lookup(opcode, sa) {
        Some(i) => i,
        None if has_service_action(opcode) => return Err(Sense::invalid_cdb(1, Some(4))),
        None => return Err(Sense::invalid_opcode()),
    };
    if cdb.len() < info.usage.len() {
        // A CDB cut short by the transport: the missing bytes are fields
        // the command needs.
        return Err(Sense::invalid_cdb(cdb.len(), None));
    }
    for (i, (&b, &mask)) in cdb.iter().zip(info.usage).enumerate() {
        let bad = b & !mask;
        if bad != 0 {
            return Err(Sense::invalid_cdb(i, Some(7 - bad.leading_zeros() as u8)));
        }
    }
    Ok(info)
}

/// Parses and checks a CDB.
pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
    let info = identify(cdb)?;
    let c = &cdb[..info.usage.len()];
    let bit = |byte: usize, b: u8| c[byte] & (1 << b) != 0;
    Ok(match info.opcode {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense {
            desc: bit(1, 0),
            alloc: c[4] as u32,
        },
        op::INQUIRY => {
            let evpd = bit(1, 0);
            if !evpd && c[2] != 0 {
                return Err(Sense::invalid_cdb(2, None));
            }
            Command::Inquiry {
                evpd,
                page: c[2],
                alloc: be16(c, 3) as u32,
            }
        }
        op::MODE_SENSE_6 | op::MODE_SENSE_10 => {
            let ten = info.opcode == op::MODE_SENSE_10;
            let pc = match c[2] >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => PageControl::Saved,
            };
            Command::ModeSense {
                req: crate::mode::SenseRequest {
                    ten,
                    dbd: bit(1, 3),
                    llbaa: ten && bit(1, 4),
                    pc,
                    page: c[2] & 0x3F,
                    subpage: c[3],
                },
                alloc: if ten { be16(c, 7) as u32 } else { c[4] as u32 },
            }
        }
        op::MODE_SELECT_6 | op::MODE_SELECT_10 => {
            let ten = info.opcode == op::MODE_SELECT_10;
            if !bit(1, 4) {
                // PF=0 means vendor-specific pages; this target has none.
                return Err(Sense::invalid_cdb(1, Some(4)));
            }
            Command::ModeSelect {
                ten,
                sp: bit(1, 0),
                len: if ten { be16(c, 7) as u32 } else { c[4] as u32 },
            }
        }
        op::START_STOP_UNIT => Command::StartStopUnit {
            power_condition: c[4] >> 4,
            loej: bit(4, 1),
            start: bit(4, 0),
        },
        op::PREVENT_ALLOW => match c[4] & 3 {
            0 => Command::PreventAllow { prevent: false },
            1 => Command::PreventAllow { prevent: true },
            // 10b/11b address a medium changer.
            _ => return Err(Sense::invalid_cdb(4, Some(1))),
        },
        op::READ_CAPACITY_10 => Command::ReadCapacity10,
        op::SERVICE_ACTION_IN_16 => Command::ReadCapacity16 { alloc: be32(c, 10) },
        op::READ_6 | op::WRITE_6 => {
            let lba = (((c[1] & 0x1F) as u64) << 16) | be16(c, 2) as u64;
            // A transfer length of 0 means 256 blocks in the 6-byte form.
            let blocks = if c[4] == 0 { 256 } else { c[4] as u32 };
            if info.opcode == op::READ_6 {
                Command::Read {
                    lba,
                    blocks,
                    fua: false,
                }
            } else {
                Command::Write {
                    lba,
                    blocks,
                    fua: false,
                }
            }
        }
        op::READ_10 | op::READ_12 | op::READ_16 | op::WRITE_10 | op::WRITE_12 | op::WRITE_16 => {
            let (lba, blocks) = match info.opcode {
                op::READ_10 | op::WRITE_10 => (be32(c, 2) as u64, be16(c, 7) as u32),
                op::READ_12 | op::WRITE_12 => (be32(c, 2) as u64, be32(c, 6)),
                _ => (be64(c, 2), be32(c, 10)),
            };
            let fua = bit(1, 3);
            if matches!(info.opcode, op::READ_10 | op::READ_12 | op::READ_16) {
                Command::Read { lba, blocks, fua }
            } else {
                Command::Write { lba, blocks, fua }
            }
        }
        op::VERIFY_10 | op::VERIFY_16 => {
            let bytchk = match (c[1] >> 1) & 3 {
                0 => ByteCheck::None,
                1 => ByteCheck::All,
                3 => ByteCheck::One,
                _ => return Err(Sense::invalid_cdb(1, Some(2))),
            };
            let (lba, blocks) = if info.opcode == op::VERIFY_10 {
                (be32(c, 2) as u64, be16(c, 7) as u32)
            } else {
                (be64(c, 2), be32(c, 10))
            };
            Command::Verify {
                lba,
                blocks,
                bytchk,
            }
        }
        op::SYNCHRONIZE_CACHE_10 => Command::SynchronizeCache {
            lba: be32(c, 2) as u64,
            blocks: be16(c, 7) as u32,
        },
        op::SYNCHRONIZE_CACHE_16 => Command::SynchronizeCache {
            lba: be64(c, 2),
            blocks: be32(c, 10),
        },
        op::WRITE_SAME_10 | op::WRITE_SAME_16 => {
            let (lba, blocks) = if info.opcode == op::WRITE_SAME_10 {
                (be32(c, 2) as u64, be16(c, 7) as u32)
            } else {
                (be64(c, 2), be32(c, 10))
            };
            let unmap = bit(1, 3);
            let ndob = bit(1, 0);
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
            }
        }
        op::UNMAP => Command::Unmap {
            len: be16(c, 7) as u32,
        },
        op::READ_TOC => {
            let format = match c[2] & 0x0F {
                0 => TocFormat::Toc,
                1 => TocFormat::SessionInfo,
                _ => return Err(Sense::invalid_cdb(2, None)),
            };
            Command::ReadToc {
                msf: bit(1, 1),
                format,
                track: c[6],
                alloc: be16(c, 7) as u32,
            }
        }
        op::GET_CONFIGURATION => {
            let rt = match c[1] & 3 {
                0 => ConfigRequest::All,
                1 => ConfigRequest::Current,
                2 => ConfigRequest::One,
                _ => return Err(Sense::invalid_cdb(1, Some(1))),
            };
            Command::GetConfiguration {
                rt,
                start: be16(c, 2),
                alloc: be16(c, 7) as u32,
            }
        }
        op::GET_EVENT_STATUS_NOTIFICATION => {
            if !bit(1, 0) {
                // Asynchronous notification is not supported (MMC-6 6.6).
                return Err(Sense::invalid_cdb(1, Some(0)));
            }
            Command::GetEventStatus {
                classes: c[4],
                alloc: be16(c, 7) as u32,
            }
        }
        op::READ_DISC_INFORMATION => {
            if c[1] & 7 != 0 {
                // Only standard disc information (data type 000b).
                return Err(Sense::invalid_cdb(1, Some(2)));
            }
            Command::ReadDiscInformation {
                alloc: be16(c, 7) as u32,
            }
        }
        op::PERSISTENT_RESERVE_IN => Command::PersistentReserveIn {
            action: match c[1] & 0x1F {
                0 => PrInAction::ReadKeys,
                1 => PrInAction::ReadReservation,
                2 => PrInAction::ReportCapabilities,
                3 => PrInAction::ReadFullStatus,
                _ => return Err(Sense::invalid_cdb(1, Some(4))),
            },
            alloc: be16(c, 7) as u32,
        },
        op::PERSISTENT_RESERVE_OUT => Command::PersistentReserveOut {
            action: match c[1] & 0x1F {
                0 => PrOutAction::Register,
                1 => PrOutAction::Reserve,
                2 => PrOutAction::Release,
                3 => PrOutAction::Clear,
                4 => PrOutAction::Preempt,
                5 => PrOutAction::PreemptAndAbort,
                6 => PrOutAction::RegisterAndIgnore,
                // REGISTER AND MOVE (7) and anything else.
                _ => return Err(Sense::invalid_cdb(1, Some(4))),
            },
            scope: c[2] >> 4,
            pr_type: c[2] & 0x0F,
            len: be32(c, 5),
        },
        op::REPORT_LUNS => {
            if !matches!(c[2], 0..=2) {
                return Err(Sense::invalid_cdb(2, None));
            }
            let alloc = be32(c, 6);
            // SPC-4 6.33: an allocation length under 16 is an error.
            if alloc < 16 {
                return Err(Sense::invalid_cdb(6, None));
            }
            Command::ReportLuns {
                select: c[2],
                alloc,
            }
        }
        op::MAINTENANCE_IN => {
            let options = c[2] & 7;
            if options > 3 {
                return Err(Sense::invalid_cdb(2, Some(2)));
            }
            Command::ReportSupportedOpcodes {
                rctd: bit(2, 7),
                options,
                opcode: c[3],
                sa: be16(c, 4),
                alloc: be32(c, 6),
            }
        }
        // The table and this match list the same opcodes.
        _ => return Err(Sense::invalid_opcode()),
    })
}

#[cfg(test)]
mod tests;
