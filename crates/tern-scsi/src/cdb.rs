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

/// Which kind of logical unit implements a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnitKind {
    /// A direct-access block device (SBC-4).
    Disk,
    /// A CD/DVD device (MMC-6).
    Dvd,
}

/// One supported command: how to recognize and check its CDB.
#[derive(Clone, Copy, Debug)]
pub struct CommandInfo {
    /// Operation code.
    pub opcode: u8,
    /// Service action (in byte 1's low 5 bits), for the opcodes that have one.
    pub service_action: Option<u8>,
    /// The command's name.
    pub name: &'static str,
    /// Bits an initiator may set, byte by byte; its length is the CDB length.
    pub usage: &'static [u8],
    /// Implemented by disks.
    pub disk: bool,
    /// Implemented by DVDs.
    pub dvd: bool,
}

impl CommandInfo {
    /// True when a unit of `kind` implements it.
    pub fn on(&self, kind: UnitKind) -> bool {
        match kind {
            UnitKind::Disk => self.disk,
            UnitKind::Dvd => self.dvd,
        }
    }
}

/// Operation codes.
pub mod op {
    #![allow(missing_docs)]
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0A;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const MODE_SENSE_6: u8 = 0x1A;
    pub const START_STOP_UNIT: u8 = 0x1B;
    pub const PREVENT_ALLOW: u8 = 0x1E;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2A;
    pub const VERIFY_10: u8 = 0x2F;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const READ_TOC: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4A;
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const MODE_SENSE_10: u8 = 0x5A;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8A;
    pub const VERIFY_16: u8 = 0x8F;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    pub const REPORT_LUNS: u8 = 0xA0;
    pub const MAINTENANCE_IN: u8 = 0xA3;
    pub const READ_12: u8 = 0xA8;
    pub const WRITE_12: u8 = 0xAA;
    /// SERVICE ACTION IN(16) service action READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
    /// MAINTENANCE IN service action REPORT SUPPORTED OPERATION CODES.
    pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0C;
}

const fn info(
    opcode: u8,
    service_action: Option<u8>,
    name: &'static str,
    usage: &'static [u8],
    disk: bool,
    dvd: bool,
) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action,
        name,
        usage,
        disk,
        dvd,
    }
}

const FF: u8 = 0xFF;

/// Every command this target implements, in operation-code order.
pub static COMMANDS: &[CommandInfo] = &[
    info(
        op::TEST_UNIT_READY,
        None,
        "TEST UNIT READY",
        &[FF, 0, 0, 0, 0, 0],
        true,
        true,
    ),
    // DESC (byte 1 bit 0).
    info(
        op::REQUEST_SENSE,
        None,
        "REQUEST SENSE",
        &[FF, 0x01, 0, 0, FF, 0],
        true,
        true,
    ),
    info(
        op::READ_6,
        None,
        "READ(6)",
        &[FF, 0x1F, FF, FF, FF, 0],
        true,
        false,
    ),
    info(
        op::WRITE_6,
        None,
        "WRITE(6)",
        &[FF, 0x1F, FF, FF, FF, 0],
        true,
        false,
    ),
    // EVPD; CMDDT (obsolete) is refused.
    info(
        op::INQUIRY,
        None,
        "INQUIRY",
        &[FF, 0x01, FF, FF, FF, 0],
        true,
        true,
    ),
    // PF, SP.
    info(
        op::MODE_SELECT_6,
        None,
        "MODE SELECT(6)",
        &[FF, 0x11, 0, 0, FF, 0],
        true,
        false,
    ),
    // DBD; PC + page code; subpage.
    info(
        op::MODE_SENSE_6,
        None,
        "MODE SENSE(6)",
        &[FF, 0x08, FF, FF, FF, 0],
        true,
        true,
    ),
    // IMMED; power condition modifier; power condition, NO_FLUSH, LOEJ, START.
    info(
        op::START_STOP_UNIT,
        None,
        "START STOP UNIT",
        &[FF, 0x01, 0, 0x0F, 0xF7, 0],
        true,
        true,
    ),
    info(
        op::PREVENT_ALLOW,
        None,
        "PREVENT ALLOW MEDIUM REMOVAL",
        &[FF, 0, 0, 0, 0x03, 0],
        false,
        true,
    ),
    // The obsolete LBA and PMI fields must be zero.
    info(
        op::READ_CAPACITY_10,
        None,
        "READ CAPACITY(10)",
        &[FF, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        true,
        true,
    ),
    // DPO, FUA (RDPROTECT, RARC refused); group number.
    info(
        op::READ_10,
        None,
        "READ(10)",
        &[FF, 0x18, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        true,
        true,
    ),
    info(
        op::WRITE_10,
        None,
        "WRITE(10)",
        &[FF, 0x18, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        true,
        false,
    ),
    // DPO, BYTCHK.
    info(
        op::VERIFY_10,
        None,
        "VERIFY(10)",
        &[FF, 0x16, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        true,
        false,
    ),
    // IMMED.
    info(
        op::SYNCHRONIZE_CACHE_10,
        None,
        "SYNCHRONIZE CACHE(10)",
        &[FF, 0x02, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        true,
        false,
    ),
    // UNMAP (ANCHOR, PBDATA, LBDATA refused).
    info(
        op::WRITE_SAME_10,
        None,
        "WRITE SAME(10)",
        &[FF, 0x08, FF, FF, FF, FF, 0x1F, FF, FF, 0],
        true,
        false,
    ),
    // ANCHOR refused; group number; parameter list length.
    info(
        op::UNMAP,
        None,
        "UNMAP",
        &[FF, 0, 0, 0, 0, 0, 0x1F, FF, FF, 0],
        true,
        false,
    ),
    // MSF; format; track/session number.
    info(
        op::READ_TOC,
        None,
        "READ TOC/PMA/ATIP",
        &[FF, 0x02, 0x0F, 0, 0, 0, FF, FF, FF, 0],
        false,
        true,
    ),
    // RT; starting feature number.
    info(
        op::GET_CONFIGURATION,
        None,
        "GET CONFIGURATION",
        &[FF, 0x03, FF, FF, 0, 0, 0, FF, FF, 0],
        false,
        true,
    ),
    // POLLED; notification class request.
    info(
        op::GET_EVENT_STATUS_NOTIFICATION,
        None,
        "GET EVENT STATUS NOTIFICATION",
        &[FF, 0x01, 0, 0, FF, 0, 0, FF, FF, 0],
        false,
        true,
    ),
    // Data type.
    info(
        op::READ_DISC_INFORMATION,
        None,
        "READ DISC INFORMATION",
        &[FF, 0x07, 0, 0, 0, 0, 0, FF, FF, 0],
        false,
        true,
    ),
    info(
        op::MODE_SELECT_10,
        None,
        "MODE SELECT(10)",
        &[FF, 0x11, 0, 0, 0, 0, 0, FF, FF, 0],
        true,
        false,
    ),
    // LLBAA, DBD.
    info(
        op::MODE_SENSE_10,
        None,
        "MODE SENSE(10)",
        &[FF, 0x18, FF, FF, 0, 0, 0, FF, FF, 0],
        true,
        true,
    ),
    info(
        op::PERSISTENT_RESERVE_IN,
        None,
        "PERSISTENT RESERVE IN",
        &[FF, 0x1F, 0, 0, 0, 0, 0, FF, FF, 0],
        true,
        false,
    ),
    // Service action; scope + type; parameter list length.
    info(
        op::PERSISTENT_RESERVE_OUT,
        None,
        "PERSISTENT RESERVE OUT",
        &[FF, 0x1F, FF, 0, 0, FF, FF, FF, FF, 0],
        true,
        false,
    ),
    info(
        op::READ_16,
        None,
        "READ(16)",
        &[
            FF, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        true,
        false,
    ),
    info(
        op::WRITE_16,
        None,
        "WRITE(16)",
        &[
            FF, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        true,
        false,
    ),
    info(
        op::VERIFY_16,
        None,
        "VERIFY(16)",
        &[
            FF, 0x16, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        true,
        false,
    ),
    info(
        op::SYNCHRONIZE_CACHE_16,
        None,
        "SYNCHRONIZE CACHE(16)",
        &[
            FF, 0x02, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        true,
        false,
    ),
    // UNMAP, NDOB.
    info(
        op::WRITE_SAME_16,
        None,
        "WRITE SAME(16)",
        &[
            FF, 0x09, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0,
        ],
        true,
        false,
    ),
    // The obsolete LBA and PMI fields must be zero.
    info(
        op::SERVICE_ACTION_IN_16,
        Some(op::SA_READ_CAPACITY_16),
        "READ CAPACITY(16)",
        &[FF, 0x1F, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        true,
        false,
    ),
    // SELECT REPORT; allocation length.
    info(
        op::REPORT_LUNS,
        None,
        "REPORT LUNS",
        &[FF, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0],
        true,
        true,
    ),
    // RCTD, reporting options; requested opcode and service action.
    info(
        op::MAINTENANCE_IN,
        Some(op::SA_REPORT_SUPPORTED_OPCODES),
        "REPORT SUPPORTED OPERATION CODES",
        &[FF, 0x1F, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, 0],
        true,
        true,
    ),
    info(
        op::READ_12,
        None,
        "READ(12)",
        &[FF, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0],
        true,
        true,
    ),
    info(
        op::WRITE_12,
        None,
        "WRITE(12)",
        &[FF, 0x18, FF, FF, FF, FF, FF, FF, FF, FF, 0x1F, 0],
        true,
        false,
    ),
];

/// True when `opcode` takes a service action in byte 1.
pub fn has_service_action(opcode: u8) -> bool {
    COMMANDS
        .iter()
        .any(|c| c.opcode == opcode && c.service_action.is_some())
}

/// The table entry for `opcode` (and `sa` where the opcode has service actions).
pub fn lookup(opcode: u8, sa: Option<u8>) -> Option<&'static CommandInfo> {
    COMMANDS
        .iter()
        .find(|c| c.opcode == opcode && (c.service_action.is_none() || c.service_action == sa))
}

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
mod tests {
    use super::*;
    use crate::sense::{Asc, SenseKey};

    #[test]
    fn every_table_entry_parses_when_zeroed() {
        for c in COMMANDS {
            let mut cdb = vec![0u8; c.usage.len()];
            cdb[0] = c.opcode;
            if let Some(sa) = c.service_action {
                cdb[1] = sa;
            }
            match c.opcode {
                op::MODE_SELECT_6 | op::MODE_SELECT_10 => cdb[1] |= 0x10,
                op::GET_EVENT_STATUS_NOTIFICATION => cdb[1] |= 1,
                op::REPORT_LUNS => cdb[9] = 16,
                _ => {}
            }
            assert!(parse(&cdb).is_ok(), "{}", c.name);
            // The mask and the opcode's own byte agree.
            assert_eq!(c.usage[0], 0xFF);
            assert_eq!(*c.usage.last().unwrap(), 0, "{}: control byte", c.name);
        }
    }

    #[test]
    fn reserved_bits_point_at_the_field() {
        // READ(10) with RDPROTECT=001b (byte 1 bit 5).
        let e = parse(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(1, Some(5)));
        // The control byte's NACA bit.
        let e = parse(&[0x00, 0, 0, 0, 0, 0x04]).unwrap_err();
        assert_eq!(e, Sense::invalid_cdb(5, Some(2)));
    }

    #[test]
    fn unknown_opcodes_and_service_actions() {
        let e = parse(&[0xC0, 0, 0, 0, 0, 0]).unwrap_err();
        assert_eq!(
            (e.key, e.asc),
            (
                SenseKey::IllegalRequest,
                Asc::INVALID_COMMAND_OPERATION_CODE
            )
        );
        assert_eq!(
            parse(&[]).unwrap_err().asc,
            Asc::INVALID_COMMAND_OPERATION_CODE
        );
        // SERVICE ACTION IN(16) with READ LONG's action.
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9E;
        cdb[1] = 0x11;
        assert_eq!(parse(&cdb).unwrap_err(), Sense::invalid_cdb(1, Some(4)));
        // Cut short.
        assert_eq!(
            parse(&[0x28, 0, 0]).unwrap_err(),
            Sense::invalid_cdb(3, None)
        );
    }

    #[test]
    fn fields_decode() {
        assert_eq!(
            parse(&[0x08, 0x1F, 0xFF, 0xFF, 0, 0]).unwrap(),
            Command::Read {
                lba: 0x1F_FFFF,
                blocks: 256,
                fua: false
            }
        );
        let mut c = [0u8; 16];
        c[0] = 0x8A;
        c[1] = 0x08;
        c[2..10].copy_from_slice(&0x1234_5678_9ABCu64.to_be_bytes());
        c[10..14].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            parse(&c).unwrap(),
            Command::Write {
                lba: 0x1234_5678_9ABC,
                blocks: 7,
                fua: true
            }
        );
        assert_eq!(
            parse(&[0x12, 0, 0x80, 0, 0xFF, 0]).unwrap_err(),
            Sense::invalid_cdb(2, None)
        );
        assert_eq!(
            parse(&[0x2F, 0x04, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap_err(),
            Sense::invalid_cdb(1, Some(2))
        );
        assert_eq!(
            parse(&[0x15, 0x01, 0, 0, 0, 0]).unwrap_err(),
            Sense::invalid_cdb(1, Some(4))
        );
        assert_eq!(
            parse(&[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 0, 0]).unwrap_err(),
            Sense::invalid_cdb(6, None)
        );
        assert_eq!(
            parse(&[0x5F, 0x07, 0, 0, 0, 0, 0, 0, 24, 0]).unwrap_err(),
            Sense::invalid_cdb(1, Some(4))
        );
    }
}
