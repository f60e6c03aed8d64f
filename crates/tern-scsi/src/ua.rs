//! Unit attention conditions (SAM-5 5.14), queued per I_T nexus.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::nexus::NexusId;
use crate::sense::{Asc, Sense, SenseKey};

/// A unit attention condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum UnitAttention {
    /// 29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    PowerOnReset,
    /// 2A/09 CAPACITY DATA HAS CHANGED.
    CapacityChanged,
    /// 3F/0E REPORTED LUNS DATA HAS CHANGED.
    ReportedLunsChanged,
    /// 28/00 NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    MediumMayHaveChanged,
    /// 2A/01 MODE PARAMETERS CHANGED.
    ModeParametersChanged,
    /// 2A/03 RESERVATIONS PREEMPTED.
    ReservationsPreempted,
    /// 2A/04 RESERVATIONS RELEASED.
    ReservationsReleased,
    /// 2A/05 REGISTRATIONS PREEMPTED.
    RegistrationsPreempted,
}

impl UnitAttention {
    /// The sense it is reported with.
    pub fn sense(self) -> Sense {
        let asc = match self {
            UnitAttention::PowerOnReset => Asc::POWER_ON_RESET,
            UnitAttention::CapacityChanged => Asc::CAPACITY_DATA_CHANGED,
            UnitAttention::ReportedLunsChanged => Asc::REPORTED_LUNS_CHANGED,
            UnitAttention::MediumMayHaveChanged => Asc::MEDIUM_MAY_HAVE_CHANGED,
            UnitAttention::ModeParametersChanged => Asc::MODE_PARAMETERS_CHANGED,
            UnitAttention::ReservationsPreempted => Asc::RESERVATIONS_PREEMPTED,
            UnitAttention::ReservationsReleased => Asc::RESERVATIONS_RELEASED,
            UnitAttention::RegistrationsPreempted => Asc::REGISTRATIONS_PREEMPTED,
        };
        Sense::new(SenseKey::UnitAttention, asc)
    }
}

/// Most conditions kept per nexus: a nexus that never asks must not grow
/// the queue without bound (SAM-5 lets a target drop the oldest).
const MAX_QUEUED: usize = 16;

/// The unit attentions of one logical unit, per nexus.
#[derive(Clone, Debug, Default)]
pub struct UaQueues {
    /// Nexuses that have sent a command since power on; the others still
    /// have a POWER ON condition pending.
    seen: BTreeSet<NexusId>,
    queues: BTreeMap<NexusId, VecDeque<UnitAttention>>,
}

impl UaQueues {
    /// Queues `ua` for `nexus` (once: a condition already queued stays).
    pub fn push(&mut self, nexus: &NexusId, ua: UnitAttention) {
        if !self.seen.contains(nexus) {
            // POWER ON still pending: it supersedes everything else.
            return;
        }
        let q = self.queues.entry(nexus.clone()).or_default();
        if q.contains(&ua) {
            return;
        }
        if ua == UnitAttention::PowerOnReset {
            q.clear();
        }
        if q.len() >= MAX_QUEUED {
            q.pop_front();
        }
        q.push_back(ua);
    }

    /// Queues `ua` for every nexus (those not seen yet get POWER ON anyway).
    pub fn broadcast(&mut self, ua: UnitAttention) {
        let seen: Vec<NexusId> = self.seen.iter().cloned().collect();
        for n in &seen {
            self.push(n, ua);
        }
    }

    /// Queues `ua` for every nexus but `except`.
    pub fn broadcast_except(&mut self, except: &NexusId, ua: UnitAttention) {
        let seen: Vec<NexusId> = self.seen.iter().filter(|n| *n != except).cloned().collect();
        for n in &seen {
            self.push(n, ua);
        }
    }

    /// A reset: every nexus gets POWER ON again.
    pub fn reset(&mut self) {
        self.seen.clear();
        self.queues.clear();
    }

    /// A reset of one nexus: it gets POWER ON again.
    pub fn reset_nexus(&mut self, nexus: &NexusId) {
        self.seen.remove(nexus);
        self.queues.remove(nexus);
    }

    /// The condition `nexus` would be told next, without taking it.
    pub fn peek(&mut self, nexus: &NexusId) -> Option<UnitAttention> {
        if !self.seen.contains(nexus) {
            return Some(UnitAttention::PowerOnReset);
        }
        self.queues.get(nexus).and_then(|q| q.front().copied())
    }

    /// Takes the next condition for `nexus`.
    pub fn take(&mut self, nexus: &NexusId) -> Option<UnitAttention> {
        if self.seen.insert(nexus.clone()) {
            return Some(UnitAttention::PowerOnReset);
        }
        let q = self.queues.get_mut(nexus)?;
        let ua = q.pop_front();
        if q.is_empty() {
            self.queues.remove(nexus);
        }
        ua
    }

    /// Drops one kind of condition for `nexus` (REPORT LUNS clears
    /// REPORTED LUNS DATA HAS CHANGED, SPC-4 6.33).
    pub fn clear(&mut self, nexus: &NexusId, ua: UnitAttention) {
        if let Some(q) = self.queues.get_mut(nexus) {
            q.retain(|u| *u != ua);
            if q.is_empty() {
                self.queues.remove(nexus);
            }
        }
    }

    /// The saved form.
    pub fn save(&self) -> Vec<UaSaved> {
        self.seen
            .iter()
            .map(|n| UaSaved {
                nexus: n.clone(),
                pending: self
                    .queues
                    .get(n)
                    .map(|q| q.iter().copied().collect())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Rebuilds from the saved form.
    pub fn restore(saved: &[UaSaved]) -> UaQueues {
        let mut q = UaQueues::default();
        for s in saved {
            q.seen.insert(s.nexus.clone());
            for &ua in s.pending.iter().take(MAX_QUEUED) {
                q.push(&s.nexus, ua);
            }
        }
        q
    }
}

/// One nexus's unit attentions in a saved state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UaSaved {
    /// The nexus (it has been told of power on).
    pub nexus: NexusId,
    /// Conditions not yet reported, oldest first.
    pub pending: Vec<UnitAttention>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: u32) -> NexusId {
        NexusId::Virtio {
            vm: "t".into(),
            controller: i,
        }
    }

    #[test]
    fn power_on_first_then_queue_in_order() {
        let mut q = UaQueues::default();
        assert_eq!(q.peek(&n(0)), Some(UnitAttention::PowerOnReset));
        // Not yet seen: a capacity change is folded into power on.
        q.broadcast(UnitAttention::CapacityChanged);
        assert_eq!(q.take(&n(0)), Some(UnitAttention::PowerOnReset));
        assert_eq!(q.take(&n(0)), None);
        q.broadcast(UnitAttention::CapacityChanged);
        q.broadcast(UnitAttention::ReportedLunsChanged);
        q.broadcast(UnitAttention::CapacityChanged);
        let saved = q.save();
        assert_eq!(q.take(&n(0)), Some(UnitAttention::CapacityChanged));
        assert_eq!(q.take(&n(0)), Some(UnitAttention::ReportedLunsChanged));
        assert_eq!(q.take(&n(0)), None);
        let mut r = UaQueues::restore(&saved);
        assert_eq!(r.take(&n(0)), Some(UnitAttention::CapacityChanged));
        assert_eq!(r.take(&n(1)), Some(UnitAttention::PowerOnReset));
    }

    #[test]
    fn bounded_and_clearable() {
        let mut q = UaQueues::default();
        q.take(&n(0));
        for _ in 0..100 {
            q.push(&n(0), UnitAttention::ModeParametersChanged);
            q.push(&n(0), UnitAttention::ReservationsReleased);
        }
        q.clear(&n(0), UnitAttention::ModeParametersChanged);
        assert_eq!(q.take(&n(0)), Some(UnitAttention::ReservationsReleased));
        assert_eq!(q.take(&n(0)), None);
        q.take(&n(1));
        q.broadcast_except(&n(0), UnitAttention::ReservationsPreempted);
        assert_eq!(q.peek(&n(0)), None);
        assert_eq!(q.peek(&n(1)), Some(UnitAttention::ReservationsPreempted));
    }
}
