//! Tern VMM core.
