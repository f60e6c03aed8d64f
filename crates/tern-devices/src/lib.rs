//! Tern device models.
