//! The reservation state's saved form (versioned, apart from the runtime
//! types) and its checks on restore.

use super::*;

impl PrState {
    /// The saved form.
    pub fn save(&self) -> PrSaved {
        PrSaved {
            version: PrSaved::VERSION,
            generation: self.generation,
            registrations: self
                .registrations
                .iter()
                .map(|r| RegistrationSaved {
                    nexus: r.nexus.clone(),
                    key: r.key,
                })
                .collect(),
            reservation: self.reservation.as_ref().map(|r| ReservationSaved {
                holder: r.holder.clone(),
                rtype: r.rtype,
            }),
            aptpl: self.aptpl,
            pending: self
                .pending
                .iter()
                .map(|(n, p)| UaSaved {
                    nexus: n.clone(),
                    pending: p.clone(),
                })
                .collect(),
        }
    }

    /// Rebuilds from the saved form, checking its version and consistency.
    pub fn restore(s: &PrSaved) -> Result<PrState, SavedPrError> {
        if s.version != PrSaved::VERSION {
            return Err(SavedPrError::Version(s.version));
        }
        let mut st = PrState {
            generation: s.generation,
            aptpl: s.aptpl,
            ..PrState::default()
        };
        for r in &s.registrations {
            if r.key == 0 || st.key_of(&r.nexus).is_some() {
                return Err(SavedPrError::BadRegistration);
            }
            st.registrations.push(Registration {
                nexus: r.nexus.clone(),
                key: r.key,
            });
        }
        if let Some(r) = &s.reservation {
            if st.key_of(&r.holder).is_none() {
                return Err(SavedPrError::HolderNotRegistered);
            }
            st.reservation = Some(Reservation {
                holder: r.holder.clone(),
                rtype: r.rtype,
            });
        }
        for p in &s.pending {
            st.pending.insert(p.nexus.clone(), p.pending.clone());
        }
        Ok(st)
    }
}

/// A saved reservation state that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SavedPrError {
    /// A version this build does not read.
    #[error("reservation state version {0} is not supported (this build reads {want})", want = PrSaved::VERSION)]
    Version(u32),
    /// A zero key or a nexus registered twice.
    #[error("reservation state has a zero key or a nexus registered twice")]
    BadRegistration,
    /// The reservation's holder has no registration.
    #[error("reservation state has a reservation whose holder is not registered")]
    HolderNotRegistered,
}

/// The saved (and shared, on disk) form of [`PrState`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrSaved {
    /// Format version ([`PrSaved::VERSION`]).
    pub version: u32,
    /// PRgeneration.
    pub generation: u32,
    /// Registrations in order.
    pub registrations: Vec<RegistrationSaved>,
    /// The reservation.
    pub reservation: Option<ReservationSaved>,
    /// APTPL.
    pub aptpl: bool,
    /// Unit attentions not yet reported, per nexus.
    pub pending: Vec<UaSaved>,
}

impl PrSaved {
    /// The version this build writes and reads.
    pub const VERSION: u32 = 1;
}

/// A saved registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationSaved {
    /// The nexus.
    pub nexus: NexusId,
    /// Its key.
    pub key: u64,
}

/// A saved reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationSaved {
    /// The nexus that made it.
    pub holder: NexusId,
    /// Its type.
    pub rtype: ReservationType,
}
