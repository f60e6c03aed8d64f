//! The host's side of a controller: pending events, the driver's event
//! buffers, [`ScsiHost`] (hot add/remove, media, resize), and their
//! saved form.

use super::*;

/// A pending event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Event {
    pub(super) code: u32,
    pub(super) lun: u16,
    pub(super) reason: u32,
}

#[derive(Debug, Default)]
pub(super) struct EventState {
    pub(super) pending: VecDeque<Event>,
    /// Event buffers taken off the event queue, oldest first.
    pub(super) buffers: VecDeque<EventBuffer>,
    /// The initiator this controller is to its target.
    pub(super) nexus: Option<NexusId>,
    /// Events were dropped: the next one carries EVENTS_MISSED.
    pub(super) missed: bool,
    /// What the driver accepted (events it did not ask for are not sent).
    pub(super) hotplug: bool,
    pub(super) change: bool,
}

/// Events shared between the device and its [`ScsiHost`].
#[derive(Debug, Default)]
pub(super) struct Events(Mutex<EventState>);

impl Events {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, EventState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push(&self, e: Event) {
        let mut s = self.lock();
        let wanted = match e.code {
            event::TRANSPORT_RESET => s.hotplug,
            _ => s.change,
        };
        if !wanted {
            return;
        }
        if s.pending.len() >= MAX_PENDING_EVENTS {
            s.pending.pop_front();
            s.missed = true;
        }
        s.pending.push_back(e);
    }
}

/// The host's side of a virtio-scsi controller: the target, and changes
/// that the driver must hear about. Call the transport's `kick` after a
/// change so the event is delivered.
#[derive(Clone)]
pub struct ScsiHost {
    pub(super) target: Arc<ScsiTarget>,
    pub(super) events: Arc<Events>,
}

impl ScsiHost {
    /// The target (for saved state, media, and direct inspection).
    pub fn target(&self) -> &Arc<ScsiTarget> {
        &self.target
    }

    /// The initiator this controller is (registrations are kept by it).
    pub fn nexus(&self) -> NexusId {
        self.events
            .lock()
            .nexus
            .clone()
            .unwrap_or_else(default_nexus)
    }

    /// The device's own state beyond the transport's: the initiator, the
    /// event buffers it holds and the events not yet delivered. Take it
    /// with the transport held (the VM paused).
    pub fn save_events(&self) -> ScsiEventsSaved {
        let s = self.events.lock();
        ScsiEventsSaved {
            version: ScsiEventsSaved::VERSION,
            nexus: s.nexus.clone().unwrap_or_else(default_nexus),
            pending: s
                .pending
                .iter()
                .map(|e| EventSaved {
                    code: e.code,
                    lun: e.lun,
                    reason: e.reason,
                })
                .collect(),
            missed: s.missed,
            buffers: s
                .buffers
                .iter()
                .map(|b| EventBufferSaved {
                    head: b.head,
                    parts: b.parts.clone(),
                })
                .collect(),
        }
    }

    /// Puts [`ScsiHost::save_events`]'s state back (after the transport's
    /// restore). Refuses another version and more buffers than a queue
    /// holds; buffer addresses are checked again when an event is written.
    pub fn restore_events(&self, saved: &ScsiEventsSaved) -> Result<(), String> {
        if saved.version != ScsiEventsSaved::VERSION {
            return Err(format!(
                "saved virtio-scsi event state version {} (this build reads {})",
                saved.version,
                ScsiEventsSaved::VERSION
            ));
        }
        if saved.buffers.len() > QUEUE_SIZE as usize || saved.pending.len() > MAX_PENDING_EVENTS {
            return Err(format!(
                "saved virtio-scsi state holds {} event buffers and {} events (at most {QUEUE_SIZE} and {MAX_PENDING_EVENTS})",
                saved.buffers.len(),
                saved.pending.len()
            ));
        }
        let mut s = self.events.lock();
        s.nexus = Some(saved.nexus.clone());
        s.missed = saved.missed;
        s.pending = saved
            .pending
            .iter()
            .map(|e| Event {
                code: e.code,
                lun: e.lun,
                reason: e.reason,
            })
            .collect();
        s.buffers = saved
            .buffers
            .iter()
            .map(|b| EventBuffer {
                head: b.head,
                parts: b.parts.clone(),
            })
            .collect();
        Ok(())
    }

    /// Queues a media-change notice for the driver (a DVD's medium was
    /// inserted or removed by the host): a PARAM_CHANGE event with
    /// MEDIUM MAY HAVE CHANGED (ASC 28h) or MEDIUM NOT PRESENT (3Ah).
    pub fn media_changed(&self, lun: u16, present: bool) {
        let asc: u32 = if present { 0x28 } else { 0x3A };
        self.events.push(Event {
            code: event::PARAM_CHANGE,
            lun,
            reason: asc,
        });
    }

    /// Hot-adds a disk at `lun`.
    pub fn add_disk(&self, lun: u16, cfg: DiskConfig) -> Result<(), TargetError> {
        self.target.add_disk(lun, cfg)?;
        self.rescan(lun);
        Ok(())
    }

    /// Hot-adds a DVD drive at `lun`.
    pub fn add_dvd(&self, lun: u16, cfg: DvdConfig) -> Result<(), TargetError> {
        self.target.add_dvd(lun, cfg)?;
        self.rescan(lun);
        Ok(())
    }

    fn rescan(&self, lun: u16) {
        self.events.push(Event {
            code: event::TRANSPORT_RESET,
            lun,
            reason: event::RESET_RESCAN,
        });
    }

    /// Hot-removes `lun`; returns its backend or medium.
    pub fn remove(&self, lun: u16) -> Result<Option<Arc<dyn BlockBackend>>, TargetError> {
        let b = self.target.remove(lun)?;
        self.events.push(Event {
            code: event::TRANSPORT_RESET,
            lun,
            reason: event::RESET_REMOVED,
        });
        Ok(b)
    }

    /// Resizes a disk online: CAPACITY DATA HAS CHANGED as a unit attention
    /// and as a PARAM_CHANGE event (reason: ASC 2Ah, ASCQ 09h).
    pub fn resize(
        &self,
        lun: u16,
        new_size: u64,
        policy: &ResizePolicy,
    ) -> Result<(), TargetError> {
        self.target.resize(lun, new_size, policy)?;
        self.events.push(Event {
            code: event::PARAM_CHANGE,
            lun,
            reason: 0x2A | (0x09 << 8),
        });
        Ok(())
    }
}

/// A virtio-scsi device's own saved state (versioned, apart from the
/// runtime types): see [`ScsiHost::save_events`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScsiEventsSaved {
    /// Format version ([`ScsiEventsSaved::VERSION`]).
    pub version: u32,
    /// The initiator the controller is.
    pub nexus: NexusId,
    /// Events not yet delivered, oldest first.
    pub pending: Vec<EventSaved>,
    /// The next event carries EVENTS_MISSED.
    pub missed: bool,
    /// Event buffers taken off the ring, oldest first.
    pub buffers: Vec<EventBufferSaved>,
}

impl ScsiEventsSaved {
    /// The version this build writes and reads.
    pub const VERSION: u32 = 1;
}

/// A pending event, saved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSaved {
    /// Event code.
    pub code: u32,
    /// The LUN.
    pub lun: u16,
    /// Reason.
    pub reason: u32,
}

/// A held event buffer, saved: its head and writable parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBufferSaved {
    /// Descriptor head.
    pub head: u16,
    /// (guest address, length) of each writable part.
    pub parts: Vec<(u64, u32)>,
}
