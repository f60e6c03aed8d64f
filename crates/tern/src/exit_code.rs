//! Process exit codes scripts can rely on (also listed in README.md); the
//! worker's library defines them, the other commands use the same.

pub use tern_worker::exit_code::*;
