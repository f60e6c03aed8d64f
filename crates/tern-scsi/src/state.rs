//! Saved-state types of a target (versioned, apart from the runtime types).

use serde::{Deserialize, Serialize};

use crate::nexus::NexusId;
use crate::pr::PrSaved;
use crate::ua::UaSaved;

/// A target's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSaved {
    /// Format version ([`TargetSaved::VERSION`]).
    pub version: u32,
    /// The logical units, ascending.
    pub luns: Vec<LunSaved>,
}

impl TargetSaved {
    /// The version this build writes and reads.
    pub const VERSION: u32 = 1;
}

/// What a logical unit is, in a saved state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LunKindSaved {
    /// A disk.
    Disk,
    /// A DVD drive.
    Dvd,
}

/// One logical unit's saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LunSaved {
    /// Its number.
    pub lun: u16,
    /// Its kind.
    pub kind: LunKindSaved,
    /// Initiators seen and their pending unit attentions.
    pub unit_attentions: Vec<UaSaved>,
    /// Write cache enabled.
    pub wce: bool,
    /// Descriptor-format sense.
    pub d_sense: bool,
    /// A DVD drive's tray and prevention.
    pub dvd: Option<DvdSaved>,
    /// Reservations kept in memory (`None` when they live in a shared
    /// store, or for DVDs).
    pub reservations: Option<PrSaved>,
}

/// A pending media event, saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaEventSaved {
    /// Eject requested.
    EjectRequest,
    /// New medium.
    NewMedia,
    /// Medium removed.
    MediaRemoval,
}

/// A DVD drive's saved state (the medium itself is the host's to reattach).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DvdSaved {
    /// The guest opened the tray.
    pub tray_open: bool,
    /// Nexuses that prevent medium removal.
    pub prevent: Vec<NexusId>,
    /// The media event not yet reported.
    pub event: Option<MediaEventSaved>,
}
