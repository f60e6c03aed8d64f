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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::Asc;

    fn n(i: u32) -> NexusId {
        NexusId::Virtio {
            vm: format!("vm{i}"),
            controller: 0,
        }
    }

    fn p(key: u64, sa_key: u64) -> PrOutParams {
        PrOutParams {
            key,
            sa_key,
            aptpl: false,
        }
    }

    fn reg(s: &mut PrState, who: u32, key: u64) {
        s.out(&n(who), PrOutAction::RegisterAndIgnore, 0, 0, &p(0, key))
            .unwrap();
    }

    #[test]
    fn params_are_checked() {
        let mut d = [0u8; 24];
        d[7] = 1;
        d[15] = 2;
        d[20] = 1;
        assert_eq!(
            PrOutParams::parse(24, &d).unwrap(),
            PrOutParams {
                key: 1,
                sa_key: 2,
                aptpl: true
            }
        );
        assert_eq!(PrOutParams::parse(23, &d), Err(Sense::param_list_length()));
        assert_eq!(
            PrOutParams::parse(24, &d[..20]),
            Err(Sense::param_list_length())
        );
        d[20] = 0x08;
        assert_eq!(
            PrOutParams::parse(24, &d),
            Err(Sense::invalid_param(20, Some(3)))
        );
        d[20] = 0x04;
        assert_eq!(
            PrOutParams::parse(24, &d),
            Err(Sense::invalid_param(20, Some(2)))
        );
    }

    #[test]
    fn register_rules_and_generation() {
        let mut s = PrState::default();
        // REGISTER with a key while unregistered: conflict.
        assert_eq!(
            s.out(&n(1), PrOutAction::Register, 0, 0, &p(5, 6)),
            Err(PrError::Conflict)
        );
        s.out(&n(1), PrOutAction::Register, 0, 0, &p(0, 6)).unwrap();
        assert_eq!(s.generation, 1);
        assert_eq!(s.key_of(&n(1)), Some(6));
        // Wrong key: conflict; right key changes it.
        assert_eq!(
            s.out(&n(1), PrOutAction::Register, 0, 0, &p(5, 7)),
            Err(PrError::Conflict)
        );
        s.out(&n(1), PrOutAction::Register, 0, 0, &p(6, 7)).unwrap();
        assert_eq!(s.key_of(&n(1)), Some(7));
        s.out(&n(1), PrOutAction::RegisterAndIgnore, 0, 0, &p(99, 8))
            .unwrap();
        assert_eq!(s.key_of(&n(1)), Some(8));
        // Unregister.
        s.out(&n(1), PrOutAction::Register, 0, 0, &p(8, 0)).unwrap();
        assert_eq!(s.key_of(&n(1)), None);
        assert_eq!(s.generation, 4);
    }

    #[test]
    fn reserve_release_and_type_checks() {
        let mut s = PrState::default();
        reg(&mut s, 1, 0xA);
        reg(&mut s, 2, 0xB);
        let g = s.generation;
        assert_eq!(
            s.out(&n(1), PrOutAction::Reserve, 0, 2, &p(0xA, 0)),
            Err(PrError::Check(Sense::invalid_cdb(2, Some(3))))
        );
        assert_eq!(
            s.out(&n(1), PrOutAction::Reserve, 1, 1, &p(0xA, 0)),
            Err(PrError::Check(Sense::invalid_cdb(2, Some(7))))
        );
        s.out(&n(1), PrOutAction::Reserve, 0, 5, &p(0xA, 0))
            .unwrap();
        // Reserving again with the same type is fine; another type or
        // another nexus conflicts.
        s.out(&n(1), PrOutAction::Reserve, 0, 5, &p(0xA, 0))
            .unwrap();
        assert_eq!(
            s.out(&n(1), PrOutAction::Reserve, 0, 1, &p(0xA, 0)),
            Err(PrError::Conflict)
        );
        assert_eq!(
            s.out(&n(2), PrOutAction::Reserve, 0, 5, &p(0xB, 0)),
            Err(PrError::Conflict)
        );
        assert_eq!(s.generation, g, "RESERVE does not count");
        // A release of the wrong type.
        assert_eq!(
            s.out(&n(1), PrOutAction::Release, 0, 1, &p(0xA, 0)),
            Err(PrError::Check(Sense::illegal(Asc::INVALID_RELEASE_OF_PR)))
        );
        // A non-holder's release succeeds and does nothing.
        s.out(&n(2), PrOutAction::Release, 0, 5, &p(0xB, 0))
            .unwrap();
        assert!(s.reservation.is_some());
        s.out(&n(1), PrOutAction::Release, 0, 5, &p(0xA, 0))
            .unwrap();
        assert!(s.reservation.is_none());
        assert_eq!(
            s.take_pending(&n(2)),
            vec![UnitAttention::ReservationsReleased]
        );
        assert!(s.take_pending(&n(1)).is_empty());
    }

    #[test]
    fn access_matrix_of_all_six_types() {
        use AccessClass::*;
        // (type, holder read/write, registrant read/write, other read/write)
        let table = [
            (1, [true, true], [true, false], [true, false]),
            (3, [true, true], [false, false], [false, false]),
            (5, [true, true], [true, true], [true, false]),
            (6, [true, true], [true, true], [false, false]),
            (7, [true, true], [true, true], [true, false]),
            (8, [true, true], [true, true], [false, false]),
        ];
        for (code, holder, registrant, other) in table {
            let mut s = PrState::default();
            reg(&mut s, 1, 1);
            reg(&mut s, 2, 2);
            s.out(&n(1), PrOutAction::Reserve, 0, code, &p(1, 0))
                .unwrap();
            for (who, want) in [(1, holder), (2, registrant), (3, other)] {
                assert_eq!(
                    s.allows(&n(who), Read),
                    want[0],
                    "type {code} nexus {who} read"
                );
                assert_eq!(
                    s.allows(&n(who), Write),
                    want[1],
                    "type {code} nexus {who} write"
                );
                assert!(s.allows(&n(who), Always));
            }
        }
    }

    #[test]
    fn preempt_cases() {
        // The holder's key: its registrations go, the reservation moves.
        let mut s = PrState::default();
        reg(&mut s, 1, 1);
        reg(&mut s, 2, 2);
        s.out(&n(1), PrOutAction::Reserve, 0, 1, &p(1, 0)).unwrap();
        let o = s.out(&n(2), PrOutAction::Preempt, 0, 3, &p(2, 1)).unwrap();
        assert_eq!(o.preempted, vec![n(1)]);
        assert_eq!(s.key_of(&n(1)), None);
        assert_eq!(s.reservation.as_ref().unwrap().holder, n(2));
        assert_eq!(
            s.reservation.as_ref().unwrap().rtype,
            ReservationType::ExclusiveAccess
        );
        assert_eq!(
            s.take_pending(&n(1)),
            vec![UnitAttention::RegistrationsPreempted]
        );
        // A key nobody has: conflict; key 0 without an all-registrants
        // reservation: invalid field.
        assert_eq!(
            s.out(&n(2), PrOutAction::Preempt, 0, 3, &p(2, 9)),
            Err(PrError::Conflict)
        );
        assert_eq!(
            s.out(&n(2), PrOutAction::Preempt, 0, 3, &p(2, 0)),
            Err(PrError::Check(Sense::invalid_param(8, None)))
        );
        // All registrants with key 0: everyone else goes.
        let mut s = PrState::default();
        reg(&mut s, 1, 1);
        reg(&mut s, 2, 2);
        reg(&mut s, 3, 3);
        s.out(&n(1), PrOutAction::Reserve, 0, 7, &p(1, 0)).unwrap();
        let o = s
            .out(&n(2), PrOutAction::PreemptAndAbort, 0, 5, &p(2, 0))
            .unwrap();
        assert_eq!(o.preempted, vec![n(1), n(3)]);
        assert_eq!(s.registrations.len(), 1);
        assert!(s.is_holder(&n(2)));
        // Unregistered nexus: conflict.
        assert_eq!(
            s.out(&n(4), PrOutAction::Preempt, 0, 5, &p(0, 2)),
            Err(PrError::Conflict)
        );
    }

    #[test]
    fn clear_and_holder_unregistration() {
        let mut s = PrState::default();
        reg(&mut s, 1, 1);
        reg(&mut s, 2, 2);
        s.out(&n(1), PrOutAction::Reserve, 0, 6, &p(1, 0)).unwrap();
        // The holder unregisters: a registrants-only reservation goes and
        // the others hear RESERVATIONS RELEASED.
        s.out(&n(1), PrOutAction::Register, 0, 0, &p(1, 0)).unwrap();
        assert!(s.reservation.is_none());
        assert_eq!(
            s.take_pending(&n(2)),
            vec![UnitAttention::ReservationsReleased]
        );
        reg(&mut s, 1, 1);
        s.out(&n(2), PrOutAction::Reserve, 0, 8, &p(2, 0)).unwrap();
        // All registrants: the reservation stays while someone is registered.
        s.out(&n(2), PrOutAction::Register, 0, 0, &p(2, 0)).unwrap();
        assert!(s.reservation.is_some());
        assert!(s.is_holder(&n(1)));
        reg(&mut s, 2, 2);
        s.out(&n(2), PrOutAction::Clear, 0, 0, &p(2, 0)).unwrap();
        assert!(s.registrations.is_empty() && s.reservation.is_none());
        assert_eq!(
            s.take_pending(&n(1)),
            vec![UnitAttention::ReservationsPreempted]
        );
        assert!(s.take_pending(&n(2)).is_empty());
    }

    #[test]
    fn in_data_and_saved_form() {
        let mut s = PrState::default();
        reg(&mut s, 1, 0x1111);
        reg(&mut s, 2, 0x2222);
        s.out(&n(1), PrOutAction::Reserve, 0, 5, &p(0x1111, 0))
            .unwrap();
        let k = s.in_data(PrInAction::ReadKeys);
        assert_eq!(&k[..8], &[0, 0, 0, 2, 0, 0, 0, 16]);
        assert_eq!(&k[8..16], &0x1111u64.to_be_bytes());
        let r = s.in_data(PrInAction::ReadReservation);
        assert_eq!(r.len(), 24);
        assert_eq!(&r[8..16], &0x1111u64.to_be_bytes());
        assert_eq!(r[21], 5);
        let c = s.in_data(PrInAction::ReportCapabilities);
        assert_eq!(c, vec![0, 8, 1, 0x80, 0xEA, 1, 0, 0]);
        let f = s.in_data(PrInAction::ReadFullStatus);
        let len = u32::from_be_bytes([f[4], f[5], f[6], f[7]]) as usize;
        assert_eq!(f.len(), 8 + len);
        assert_eq!(f[8 + 12], 1, "first registrant holds it");
        assert_eq!(f[8 + 13], 5);
        let saved = s.save();
        let json = serde_json::to_string(&saved).unwrap();
        let back: PrSaved = serde_json::from_str(&json).unwrap();
        assert_eq!(PrState::restore(&back).unwrap(), s);
        let mut bad = saved.clone();
        bad.version = 9;
        assert_eq!(PrState::restore(&bad), Err(SavedPrError::Version(9)));
        let mut bad = saved;
        bad.registrations.remove(0);
        assert_eq!(
            PrState::restore(&bad),
            Err(SavedPrError::HolderNotRegistered)
        );
        // Power loss without APTPL drops it all.
        s.power_loss();
        assert!(s.registrations.is_empty());
    }
}
