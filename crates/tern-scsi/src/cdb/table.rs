//! The command table: every supported operation code (and service
//! action), its CDB length and usage mask, and which unit kind runs it.

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
