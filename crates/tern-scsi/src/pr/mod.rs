//! Persistent reservations (SPC-4 5.13): registrations, the reservation,
//! the generation counter, and the PERSISTENT RESERVE IN/OUT service
//! actions over them. The state lives in a [`crate::store::ReservationStore`]
//! so that every worker that has a shared disk open sees the same one.
//!
//! Scope is the logical unit (LU_SCOPE); the target has one port, so
//! ALL_TG_PT is refused, as are SPEC_I_PT and REGISTER AND MOVE
//! (REPORT CAPABILITIES says so). PREEMPT AND ABORT returns the nexuses it
//! preempted; commands run to completion one at a time, so there are no
//! queued tasks of theirs to abort here (a transport that queues must
//! drop theirs).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cdb::{PrInAction, PrOutAction};
use crate::nexus::NexusId;
use crate::sense::Sense;
use crate::ua::{UaSaved, UnitAttention};

/// The six reservation types (SPC-4 table 210).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationType {
    /// Write Exclusive (1h).
    WriteExclusive,
    /// Exclusive Access (3h).
    ExclusiveAccess,
    /// Write Exclusive, Registrants Only (5h).
    WriteExclusiveRegistrantsOnly,
    /// Exclusive Access, Registrants Only (6h).
    ExclusiveAccessRegistrantsOnly,
    /// Write Exclusive, All Registrants (7h).
    WriteExclusiveAllRegistrants,
    /// Exclusive Access, All Registrants (8h).
    ExclusiveAccessAllRegistrants,
}

impl ReservationType {
    /// All six.
    pub const ALL: [ReservationType; 6] = [
        ReservationType::WriteExclusive,
        ReservationType::ExclusiveAccess,
        ReservationType::WriteExclusiveRegistrantsOnly,
        ReservationType::ExclusiveAccessRegistrantsOnly,
        ReservationType::WriteExclusiveAllRegistrants,
        ReservationType::ExclusiveAccessAllRegistrants,
    ];

    /// The TYPE code.
    pub fn code(self) -> u8 {
        match self {
            ReservationType::WriteExclusive => 1,
            ReservationType::ExclusiveAccess => 3,
            ReservationType::WriteExclusiveRegistrantsOnly => 5,
            ReservationType::ExclusiveAccessRegistrantsOnly => 6,
            ReservationType::WriteExclusiveAllRegistrants => 7,
            ReservationType::ExclusiveAccessAllRegistrants => 8,
        }
    }

    /// The type of a TYPE code.
    pub fn from_code(code: u8) -> Option<ReservationType> {
        ReservationType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Every registrant holds it.
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            ReservationType::WriteExclusiveAllRegistrants
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants that do not hold it may still write (and read).
    fn registrants_access(self) -> bool {
        !matches!(
            self,
            ReservationType::WriteExclusive | ReservationType::ExclusiveAccess
        )
    }

    /// Reads by non-registrants conflict too.
    fn exclusive_access(self) -> bool {
        matches!(
            self,
            ReservationType::ExclusiveAccess
                | ReservationType::ExclusiveAccessRegistrantsOnly
                | ReservationType::ExclusiveAccessAllRegistrants
        )
    }
}

/// How a command touches the medium, for the reservation check
/// (SPC-4 5.13.1 table 64, SBC-4 4.17 table 14, MMC-6 4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessClass {
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, REQUEST
    /// SENSE, READ CAPACITY, TEST UNIT READY, PR IN, REPORT SUPPORTED
    /// OPERATION CODES).
    Always,
    /// Reads data (READ, VERIFY, MODE SENSE): conflicts under the
    /// exclusive-access types for those without access.
    Read,
    /// Changes the medium or the unit (WRITE, WRITE SAME, UNMAP,
    /// SYNCHRONIZE CACHE, MODE SELECT, START STOP UNIT): conflicts for
    /// those without access under every type.
    Write,
}

/// One registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// The registered nexus.
    pub nexus: NexusId,
    /// Its reservation key (never 0).
    pub key: u64,
}

/// The persistent reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The nexus that made it (for all-registrants types every registrant
    /// holds it; this one is kept for the record).
    pub holder: NexusId,
    /// Its type.
    pub rtype: ReservationType,
}

/// The persistent reservation state of one logical unit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrState {
    /// PRgeneration.
    pub generation: u32,
    /// Registrations in the order they were made.
    pub registrations: Vec<Registration>,
    /// The reservation.
    pub reservation: Option<Reservation>,
    /// Activate persist through power loss (the last REGISTER's APTPL).
    pub aptpl: bool,
    /// Unit attentions these changes raised for other nexuses, kept here so
    /// a worker that shares the state reports them to its own initiators.
    pub pending: BTreeMap<NexusId, Vec<UnitAttention>>,
}

/// Why a PERSISTENT RESERVE OUT (or a command under a reservation) failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

impl From<Sense> for PrError {
    fn from(s: Sense) -> PrError {
        PrError::Check(s)
    }
}

/// The 24-byte PERSISTENT RESERVE OUT parameter list (SPC-4 6.16.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrOutParams {
    /// RESERVATION KEY.
    pub key: u64,
    /// SERVICE ACTION RESERVATION KEY.
    pub sa_key: u64,
    /// APTPL.
    pub aptpl: bool,
}

impl PrOutParams {
    /// Parses and checks the parameter list (`len`: the CDB's parameter
    /// list length; `data`: what the initiator sent).
    pub fn parse(len: u32, data: &[u8]) -> Result<PrOutParams, Sense> {
        if len != 24 {
            return Err(Sense::param_list_length());
        }
        let Some(p) = data.get(..24) else {
            return Err(Sense::param_list_length());
        };
        if p[20] & 0x08 != 0 {
            // SPEC_I_PT: SIP_C is 0.
            return Err(Sense::invalid_param(20, Some(3)));
        }
        if p[20] & 0x04 != 0 {
            // ALL_TG_PT: ATP_C is 0.
            return Err(Sense::invalid_param(20, Some(2)));
        }
        let mut k = [0u8; 8];
        k.copy_from_slice(&p[0..8]);
        let mut s = [0u8; 8];
        s.copy_from_slice(&p[8..16]);
        Ok(PrOutParams {
            key: u64::from_be_bytes(k),
            sa_key: u64::from_be_bytes(s),
            aptpl: p[20] & 0x01 != 0,
        })
    }
}

/// What a successful PERSISTENT RESERVE OUT did beyond changing the state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrOutcome {
    /// Nexuses whose registrations a PREEMPT (AND ABORT) removed.
    pub preempted: Vec<NexusId>,
}

impl PrState {
    /// The key `nexus` is registered with.
    pub fn key_of(&self, nexus: &NexusId) -> Option<u64> {
        self.registrations
            .iter()
            .find(|r| &r.nexus == nexus)
            .map(|r| r.key)
    }

    /// True when `nexus` holds the reservation.
    pub fn is_holder(&self, nexus: &NexusId) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.rtype.all_registrants() => self.key_of(nexus).is_some(),
            Some(r) => &r.holder == nexus,
        }
    }

    /// May `nexus` run a command of `class` (SPC-4 5.13.1)?
    pub fn allows(&self, nexus: &NexusId, class: AccessClass) -> bool {
        let Some(r) = &self.reservation else {
            return true;
        };
        if class == AccessClass::Always || self.is_holder(nexus) {
            return true;
        }
        if r.rtype.registrants_access() && self.key_of(nexus).is_some() {
            return true;
        }
        class == AccessClass::Read && !r.rtype.exclusive_access()
    }

    /// What a power loss leaves: everything when APTPL was set, nothing
    /// otherwise (SPC-4 5.13.5).
    pub fn power_loss(&mut self) {
        if !self.aptpl {
            self.registrations.clear();
            self.reservation = None;
        }
        self.pending.clear();
    }

    fn notify(&mut self, nexus: &NexusId, ua: UnitAttention) {
        let q = self.pending.entry(nexus.clone()).or_default();
        if !q.contains(&ua) && q.len() < 16 {
            q.push(ua);
        }
    }

    /// Takes the unit attentions pending for `nexus`.
    pub fn take_pending(&mut self, nexus: &NexusId) -> Vec<UnitAttention> {
        self.pending.remove(nexus).unwrap_or_default()
    }

    /// Removes the registrations of `victims`, releasing the reservation
    /// when its holder goes, and tells each one.
    fn remove_registrations(&mut self, victims: &[NexusId], ua: UnitAttention) {
        self.registrations.retain(|r| !victims.contains(&r.nexus));
        for v in victims {
            self.notify(v, ua);
        }
        self.drop_orphan_reservation();
    }

    /// A reservation whose holder is no longer registered is released
    /// (an all-registrants one when the last registrant goes).
    fn drop_orphan_reservation(&mut self) {
        if let Some(r) = &self.reservation {
            let gone = if r.rtype.all_registrants() {
                self.registrations.is_empty()
            } else {
                self.key_of(&r.holder).is_none()
            };
            if gone {
                let rtype = r.rtype;
                self.reservation = None;
                if rtype.registrants_access() && !rtype.all_registrants() {
                    // SPC-4 5.13.11.2.2: a registrants-only reservation
                    // released by its holder's unregistration.
                    let others: Vec<NexusId> =
                        self.registrations.iter().map(|r| r.nexus.clone()).collect();
                    for n in &others {
                        self.notify(n, UnitAttention::ReservationsReleased);
                    }
                }
            }
        }
    }

    /// Runs a PERSISTENT RESERVE OUT service action. `scope` and `pr_type`
    /// are the CDB's fields.
    pub fn out(
        &mut self,
        nexus: &NexusId,
        action: PrOutAction,
        scope: u8,
        pr_type: u8,
        p: &PrOutParams,
    ) -> Result<PrOutcome, PrError> {
        let registered = self.key_of(nexus);
        let uses_type = matches!(
            action,
            PrOutAction::Reserve
                | PrOutAction::Release
                | PrOutAction::Preempt
                | PrOutAction::PreemptAndAbort
        );
        let mut rtype = None;
        if uses_type {
            if scope != 0 {
                return Err(Sense::invalid_cdb(2, Some(7)).into());
            }
            rtype =
                Some(ReservationType::from_code(pr_type).ok_or(Sense::invalid_cdb(2, Some(3)))?);
        }
        let mut outcome = PrOutcome::default();
        match action {
            PrOutAction::Register | PrOutAction::RegisterAndIgnore => {
                let ignore = action == PrOutAction::RegisterAndIgnore;
                match registered {
                    None => {
                        if !ignore && p.key != 0 {
                            return Err(PrError::Conflict);
                        }
                        if p.sa_key != 0 {
                            self.registrations.push(Registration {
                                nexus: nexus.clone(),
                                key: p.sa_key,
                            });
                        }
                    }
                    Some(k) => {
                        if !ignore && p.key != k {
                            return Err(PrError::Conflict);
                        }
                        if p.sa_key == 0 {
                            self.registrations.retain(|r| &r.nexus != nexus);
                            self.drop_orphan_reservation();
                        } else if let Some(r) =
                            self.registrations.iter_mut().find(|r| &r.nexus == nexus)
                        {
                            r.key = p.sa_key;
                        }
                    }
                }
                self.aptpl = p.aptpl;
                self.generation = self.generation.wrapping_add(1);
            }
            PrOutAction::Reserve => {
                let rtype = rtype.ok_or(Sense::invalid_cdb(2, Some(3)))?;
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                match &self.reservation {
                    None => {
                        self.reservation = Some(Reservation {
                            holder: nexus.clone(),
                            rtype,
                        })
                    }
                    Some(r) if r.rtype == rtype && self.is_holder(nexus) => {}
                    Some(_) => return Err(PrError::Conflict),
                }
            }
            PrOutAction::Release => {
                let rtype = rtype.ok_or(Sense::invalid_cdb(2, Some(3)))?;
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                if let Some(r) = &self.reservation {
                    if self.is_holder(nexus) {
                        if r.rtype != rtype {
                            return Err(
                                Sense::illegal(crate::sense::Asc::INVALID_RELEASE_OF_PR).into()
                            );
                        }
                        let old = r.rtype;
                        self.reservation = None;
                        if old.registrants_access() {
                            let others: Vec<NexusId> = self
                                .registrations
                                .iter()
                                .filter(|r| &r.nexus != nexus)
                                .map(|r| r.nexus.clone())
                                .collect();
                            for n in &others {
                                self.notify(n, UnitAttention::ReservationsReleased);
                            }
                        }
                    }
                }
            }
            PrOutAction::Clear => {
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                let others: Vec<NexusId> = self
                    .registrations
                    .iter()
                    .filter(|r| &r.nexus != nexus)
                    .map(|r| r.nexus.clone())
                    .collect();
                for n in &others {
                    self.notify(n, UnitAttention::ReservationsPreempted);
                }
                self.registrations.clear();
                self.reservation = None;
                self.generation = self.generation.wrapping_add(1);
            }
            PrOutAction::Preempt | PrOutAction::PreemptAndAbort => {
                let rtype = rtype.ok_or(Sense::invalid_cdb(2, Some(3)))?;
                if registered != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                let with_key = |s: &PrState, key: u64, keep_self: bool| -> Vec<NexusId> {
                    s.registrations
                        .iter()
                        .filter(|r| r.key == key && !(keep_self && &r.nexus == nexus))
                        .map(|r| r.nexus.clone())
                        .collect()
                };
                let reservation = self.reservation.clone();
                match reservation {
                    Some(r) if r.rtype.all_registrants() && p.sa_key == 0 => {
                        // SPC-4 5.13.11.4.4: everyone else goes, and the
                        // preempter gets the new reservation.
                        let victims: Vec<NexusId> = self
                            .registrations
                            .iter()
                            .filter(|r| &r.nexus != nexus)
                            .map(|r| r.nexus.clone())
                            .collect();
                        self.remove_registrations(&victims, UnitAttention::RegistrationsPreempted);
                        self.reservation = Some(Reservation {
                            holder: nexus.clone(),
                            rtype,
                        });
                        outcome.preempted = victims;
                    }
                    Some(r)
                        if !r.rtype.all_registrants()
                            && self.key_of(&r.holder) == Some(p.sa_key) =>
                    {
                        // The holder's key: its registrations (not ours)
                        // go and the reservation becomes ours.
                        let victims = with_key(self, p.sa_key, true);
                        self.reservation = None;
                        self.remove_registrations(&victims, UnitAttention::RegistrationsPreempted);
                        self.reservation = Some(Reservation {
                            holder: nexus.clone(),
                            rtype,
                        });
                        outcome.preempted = victims;
                    }
                    _ => {
                        // No reservation, or a key that does not hold it:
                        // only registrations go.
                        if p.sa_key == 0 {
                            return Err(Sense::invalid_param(8, None).into());
                        }
                        let victims = with_key(self, p.sa_key, false);
                        if victims.is_empty() {
                            return Err(PrError::Conflict);
                        }
                        self.remove_registrations(&victims, UnitAttention::RegistrationsPreempted);
                        outcome.preempted = victims;
                    }
                }
                // The preempter is never told of its own preemption.
                self.pending.remove(nexus);
                self.generation = self.generation.wrapping_add(1);
            }
        }
        Ok(outcome)
    }

    /// Builds the PERSISTENT RESERVE IN data (SPC-4 6.15), untruncated.
    pub fn in_data(&self, action: PrInAction) -> Vec<u8> {
        let mut d = Vec::new();
        match action {
            PrInAction::ReadKeys => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&((self.registrations.len() * 8) as u32).to_be_bytes());
                for r in &self.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            PrInAction::ReadReservation => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                match &self.reservation {
                    None => d.extend_from_slice(&0u32.to_be_bytes()),
                    Some(r) => {
                        d.extend_from_slice(&16u32.to_be_bytes());
                        let key = if r.rtype.all_registrants() {
                            0
                        } else {
                            self.key_of(&r.holder).unwrap_or(0)
                        };
                        d.extend_from_slice(&key.to_be_bytes());
                        d.extend_from_slice(&[0, 0, 0, 0, 0, r.rtype.code(), 0, 0]);
                    }
                }
            }
            PrInAction::ReportCapabilities => {
                // PTPL_C; TMV with PTPL_A; the six types.
                d.extend_from_slice(&[0, 8, 0x01, 0x80 | self.aptpl as u8, 0xEA, 0x01, 0, 0]);
            }
            PrInAction::ReadFullStatus => {
                d.extend_from_slice(&self.generation.to_be_bytes());
                d.extend_from_slice(&[0; 4]);
                for r in &self.registrations {
                    let holder = self.is_holder(&r.nexus);
                    let tid = r.nexus.transport_id();
                    d.extend_from_slice(&r.key.to_be_bytes());
                    d.extend_from_slice(&[0; 4]);
                    d.push(holder as u8);
                    d.push(match (&self.reservation, holder) {
                        (Some(res), true) => res.rtype.code(),
                        _ => 0,
                    });
                    d.extend_from_slice(&[0; 4]);
                    // Relative target port 1.
                    d.extend_from_slice(&[0, 1]);
                    d.extend_from_slice(&(tid.len() as u32).to_be_bytes());
                    d.extend_from_slice(&tid);
                }
                let len = (d.len() - 8) as u32;
                d[4..8].copy_from_slice(&len.to_be_bytes());
            }
        }
        d
    }
}

mod saved;
pub use self::saved::{PrSaved, RegistrationSaved, ReservationSaved, SavedPrError};

#[cfg(test)]
mod tests;
