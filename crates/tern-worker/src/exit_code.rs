//! Process exit codes scripts can rely on (also listed in README.md).

/// Success: the guest reported status 0, powered itself off (ACPI S5),
/// or the VM was stopped on request.
pub const OK: i32 = 0;
/// The guest rebooted (the ACPI reset register, the keyboard controller's
/// reset line, or a KVM reset event; a triple fault is a crash, 70): Tern
/// does not restart the VM itself, the worker ends with this code so a
/// supervisor can start it again.
pub const REBOOT: i32 = 80;
/// Bad command line or configuration (BSD `EX_USAGE`).
pub const USAGE: i32 = 64;
/// A saved state, export or other input is damaged, incomplete or from
/// an incompatible version (`EX_DATAERR`).
pub const DATA_ERR: i32 = 65;
/// A needed input file is missing or unreadable (`EX_NOINPUT`).
pub const NO_INPUT: i32 = 66;
/// KVM is unavailable (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: i32 = 69;
/// The guest crashed or the VMM failed at run time (`EX_SOFTWARE`).
pub const SOFTWARE: i32 = 70;
/// An output file the worker was asked to write cannot be created
/// (`EX_CANTCREAT`), e.g. the launch spec's `listening_file`.
pub const CANT_CREATE: i32 = 73;
