//! The VHDX virtual disk format.
#![forbid(unsafe_code)]
