//! Tern's saved states: the state file format, saved VM directories,
//! checkpoints, and export/import.
//!
//! # Compatibility rules
//!
//! Saved states outlive the build that wrote them: a VM saved before an
//! upgrade is restored after it, and golden states written by earlier
//! versions are restored by the tests (`tests/data/golden`). So:
//!
//! - Every encoded type ([`proto`] here, `tern_vmm::state::proto` for CPU
//!   and device state) is a protobuf message with numbered fields, apart
//!   from the runtime types.
//! - Fields are only added, never renumbered, retyped or reused; a removed
//!   field's number stays reserved.
//! - A new field is optional: when it is absent (an older writer), the
//!   reader behaves as before the field existed.
//! - A reader reports the fields it does not know (an newer writer's),
//!   found by [`tern_vmm::state::compat`]; it never drops them silently.
//!   A writer that adds a field an older reader must not ignore lists its
//!   dotted path in `required`; a reader that finds a required field
//!   unknown refuses the file.
//! - The file header ([`file`]) carries the writer's format version and
//!   the oldest reader version allowed to read it. Incompatible changes
//!   raise both; a reader refuses a file whose minimum it does not meet.
//! - This build reads format versions [`file::OLDEST_READABLE`] to
//!   [`file::FORMAT_VERSION`]: version N reads N-1.
//!
//! `docs/saved-state.md` describes the same rules for people.

pub mod checkpoint;
pub mod export;
pub mod file;
pub mod fuzzing;
pub mod proto;
pub mod saved;
mod staging;

pub use file::{FileError, FORMAT_VERSION};
pub use saved::{load, save_into, Loaded, SaveInfo, SavedError};
