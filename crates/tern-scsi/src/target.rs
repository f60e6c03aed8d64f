//! The target: logical units by number, the request entry point, host-side
//! changes (hot add/remove, resize, media) and the saved state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tern_block::{BlockBackend, BlockError, ResizePolicy};

use crate::cdb::{self, op, Command, CommandInfo, UnitKind};
use crate::disk::Disk;
use crate::dvd::{Dvd, DvdState, MediaEvent};
use crate::inquiry::{self, Identity};
use crate::mode::ModeState;
use crate::nexus::NexusId;
use crate::response::{alloc, Fail, Response};
use crate::sense::{Asc, Sense, SenseKey};
use crate::state::{LunKindSaved, LunSaved, TargetSaved};
use crate::store::{MemoryStore, ReservationStore, StoreError};
use crate::ua::{UaQueues, UnitAttention};

/// Highest LUN number: flat space addressing has 14 bits (SAM-5 4.7.7).
pub const MAX_LUN: u16 = 0x3FFF;

/// Errors of host-side operations on a target.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// No logical unit has that number.
    #[error("LUN {0} does not exist")]
    NoSuchLun(u16),
    /// The number is taken.
    #[error("LUN {0} already exists")]
    LunExists(u16),
    /// The number cannot be addressed.
    #[error("LUN {0} is out of range (0..={MAX_LUN})")]
    BadLun(u16),
    /// A DVD operation on a disk, or the reverse.
    #[error("LUN {lun} is not a {wanted}")]
    WrongKind {
        /// The LUN.
        lun: u16,
        /// What the operation needs ("DVD drive", "disk").
        wanted: &'static str,
    },
    /// The guest prevents medium removal.
    #[error("LUN {0}: the guest prevents medium removal (the guest was asked to allow it)")]
    RemovalPrevented(u16),
    /// The block backend failed.
    #[error("LUN {lun}: disk operation failed")]
    Block {
        /// The LUN.
        lun: u16,
        /// Why.
        #[source]
        source: BlockError,
    },
    /// The reservation store failed.
    #[error("LUN {lun}: reservation store failed")]
    Store {
        /// The LUN.
        lun: u16,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// A saved state of another version.
    #[error("saved SCSI target state version {0} is not supported (this build reads {want})", want = TargetSaved::VERSION)]
    SavedVersion(u32),
    /// A saved state whose LUNs are not the target's.
    #[error("saved SCSI target state does not match the target at LUN {0} (a LUN is missing, extra, or of another kind)")]
    SavedMismatch(u16),
}

/// A disk to attach.
pub struct DiskConfig {
    /// The backend.
    pub backend: Arc<dyn BlockBackend>,
    /// Unit serial number (VPD 80h; the device identifiers derive from it).
    /// `None` takes the backend's id. Attachments of one shared disk must
    /// use the same serial.
    pub serial: Option<String>,
    /// Where reservations live; `None`: in memory, private to this target.
    pub reservations: Option<Arc<dyn ReservationStore>>,
    /// Offer UNMAP and WRITE SAME with UNMAP (the backend's discard).
    pub unmap: bool,
}

impl DiskConfig {
    /// A disk with defaults: the backend's id, memory reservations, UNMAP.
    pub fn new(backend: Arc<dyn BlockBackend>) -> DiskConfig {
        DiskConfig {
            backend,
            serial: None,
            reservations: None,
            unmap: true,
        }
    }
}

/// A DVD drive to attach.
pub struct DvdConfig {
    /// Unit serial number.
    pub serial: String,
    /// The medium in the drive, if any (an ISO image: [`crate::open_iso`]).
    pub medium: Option<Arc<dyn BlockBackend>>,
}

/// What a logical unit is.
pub(crate) enum Unit {
    Disk(Disk),
    Dvd(Dvd),
}

/// State of a logical unit that commands change.
#[derive(Default)]
pub(crate) struct LunState {
    pub ua: UaQueues,
    pub mode: ModeState,
    pub dvd: DvdState,
}

/// One logical unit.
pub(crate) struct Lun {
    pub number: u16,
    pub unit: Unit,
    pub id: Identity,
    state: Mutex<LunState>,
}

/// One command's inputs.
pub(crate) struct Ctx<'a> {
    pub nexus: &'a NexusId,
    pub data_out: &'a [u8],
    pub data_in_len: usize,
}

impl Lun {
    pub fn state(&self) -> MutexGuard<'_, LunState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn kind(&self) -> UnitKind {
        self.id.kind
    }

    /// True when this unit runs the command.
    pub fn implements(&self, info: &CommandInfo) -> bool {
        info.on(self.kind()) && (info.opcode != op::UNMAP || self.id.unmap)
    }

    fn execute(&self, target: &ScsiTarget, ctx: &Ctx<'_>, cdb_bytes: &[u8]) -> Response {
        // Unit attentions another worker raised through shared reservations.
        if let Unit::Disk(d) = &self.unit {
            match d.take_shared_attentions(ctx.nexus) {
                Ok(uas) => {
                    let mut st = self.state();
                    for ua in uas {
                        st.ua.push(ctx.nexus, ua);
                    }
                }
                Err(_) => return self.respond(Err(Fail::Check(internal_failure())), ctx),
            }
        }
        let opcode = cdb_bytes.first().copied();
        // SAM-5 5.14: INQUIRY, REPORT LUNS and REQUEST SENSE run with a unit
        // attention pending; MMC-6 lets GET EVENT STATUS NOTIFICATION run
        // too (it is how a drive reports media changes).
        let exempt = matches!(
            opcode,
            Some(op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE)
        ) || (self.kind() == UnitKind::Dvd
            && opcode == Some(op::GET_EVENT_STATUS_NOTIFICATION));
        if !exempt {
            let mut st = self.state();
            if let Some(ua) = st.ua.take(ctx.nexus) {
                let d = st.mode.d_sense;
                return Response::check(&ua.sense(), d, ctx.data_in_len);
            }
        }
        let result = cdb::identify(cdb_bytes).and_then(|info| {
            if !self.implements(info) {
                return Err(Sense::invalid_opcode());
            }
            cdb::parse(cdb_bytes)
        });
        let out = match result {
            Err(s) => Err(Fail::Check(s)),
            Ok(cmd) => self.run(target, ctx, &cmd),
        };
        self.respond(out, ctx)
    }

    fn respond(&self, out: Result<Vec<u8>, Fail>, ctx: &Ctx<'_>) -> Response {
        match out {
            Ok(data) => Response::good(data, ctx.data_in_len),
            Err(f) => {
                let d = self.state().mode.d_sense;
                match f {
                    Fail::Check(s) => Response::check(&s, d, ctx.data_in_len),
                    Fail::Conflict => Response::conflict(ctx.data_in_len),
                    Fail::Overrun => Response::overrun(d, ctx.data_in_len),
                }
            }
        }
    }

    fn run(&self, target: &ScsiTarget, ctx: &Ctx<'_>, cmd: &Command) -> Result<Vec<u8>, Fail> {
        match *cmd {
            Command::Inquiry {
                evpd,
                page,
                alloc: a,
            } => {
                let data = if evpd {
                    self.id.vpd(page)?
                } else {
                    self.id.standard()
                };
                Ok(alloc(data, a))
            }
            Command::RequestSense { desc, alloc: a } => {
                let mut st = self.state();
                let sense = match st.ua.take(ctx.nexus) {
                    Some(ua) => ua.sense(),
                    // An empty drive reports why it is not ready (SPC-4
                    // 6.39: the sense of the unit's current condition).
                    None if self.kind() == UnitKind::Dvd && !st.dvd.present() => st.dvd.not_ready(),
                    None => Sense::new(SenseKey::NoSense, Asc::NONE),
                };
                Ok(alloc(sense.encode(desc), a))
            }
            Command::ReportLuns { select, alloc: a } => {
                self.state()
                    .ua
                    .clear(ctx.nexus, UnitAttention::ReportedLunsChanged);
                Ok(alloc(target.report_luns(select), a))
            }
            Command::ReportSupportedOpcodes {
                rctd,
                options,
                opcode,
                sa,
                alloc: a,
            } => Ok(alloc(self.supported_opcodes(rctd, options, opcode, sa)?, a)),
            _ => match &self.unit {
                Unit::Disk(d) => d.run(self, ctx, cmd),
                Unit::Dvd(d) => d.run(self, ctx, cmd),
            },
        }
    }

    /// REPORT SUPPORTED OPERATION CODES data (SPC-4 6.35).
    fn supported_opcodes(
        &self,
        rctd: bool,
        options: u8,
        opcode: u8,
        sa: u16,
    ) -> Result<Vec<u8>, Sense> {
        let timeouts: &[u8] = &[0, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut d = Vec::new();
        if options == 0 {
            d.extend_from_slice(&[0; 4]);
            for c in cdb::COMMANDS.iter().filter(|c| self.implements(c)) {
                let sa = c.service_action.unwrap_or(0) as u16;
                d.push(c.opcode);
                d.push(0);
                d.extend_from_slice(&sa.to_be_bytes());
                d.push(0);
                d.push(((rctd as u8) << 1) | c.service_action.is_some() as u8);
                d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                if rctd {
                    d.extend_from_slice(timeouts);
                }
            }
            let len = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&len.to_be_bytes());
            return Ok(d);
        }
        let has_sa = cdb::has_service_action(opcode);
        let found = match options {
            1 if has_sa => return Err(Sense::invalid_cdb(2, Some(2))),
            2 if !has_sa => return Err(Sense::invalid_cdb(2, Some(2))),
            1 => cdb::lookup(opcode, None),
            _ if has_sa => u8::try_from(sa)
                .ok()
                .and_then(|sa| cdb::lookup(opcode, Some(sa))),
            _ => {
                if sa != 0 {
                    // Option 3 with an opcode without service actions:
                    // the service action field must be 0 (SPC-4 6.35.2).
                    None
                } else {
                    cdb::lookup(opcode, None)
                }
            }
        }
        .filter(|c| self.implements(c));
        match found {
            None => d.extend_from_slice(&[0, 0x01, 0, 0]),
            Some(c) => {
                d.push(0);
                d.push(((rctd as u8) << 7) | 0x03);
                d.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                // CDB usage data: the opcode, the service action where there
                // is one, then the bits the command looks at.
                d.push(c.opcode);
                d.push(match c.service_action {
                    Some(sa) => (c.usage[1] & !0x1F) | sa,
                    None => c.usage[1],
                });
                d.extend_from_slice(&c.usage[2..]);
                if rctd {
                    d.extend_from_slice(timeouts);
                }
            }
        }
        Ok(d)
    }
}

/// ILLEGAL REQUEST is the initiator's fault; this is the target's.
pub(crate) fn internal_failure() -> Sense {
    Sense::new(SenseKey::HardwareError, Asc::INTERNAL_TARGET_FAILURE)
}

/// A SCSI target: logical units addressed by number, driven by
/// [`ScsiTarget::execute`] from any transport (virtio-scsi, iSCSI).
/// All methods take `&self`; commands to different LUNs run in parallel,
/// and data transfers do not hold the unit's state lock.
#[derive(Default)]
pub struct ScsiTarget {
    luns: RwLock<BTreeMap<u16, Arc<Lun>>>,
}

impl std::fmt::Debug for ScsiTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiTarget")
            .field("luns", &self.luns())
            .finish()
    }
}

impl ScsiTarget {
    /// A target without logical units.
    pub fn new() -> ScsiTarget {
        ScsiTarget::default()
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u16, Arc<Lun>>> {
        self.luns.read().unwrap_or_else(|p| p.into_inner())
    }

    fn map_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u16, Arc<Lun>>> {
        self.luns.write().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, lun: u16) -> Result<Arc<Lun>, TargetError> {
        self.map()
            .get(&lun)
            .cloned()
            .ok_or(TargetError::NoSuchLun(lun))
    }

    /// The LUN numbers, ascending.
    pub fn luns(&self) -> Vec<u16> {
        self.map().keys().copied().collect()
    }

    /// The kind of unit at `lun`.
    pub fn kind(&self, lun: u16) -> Option<UnitKind> {
        self.map().get(&lun).map(|l| l.kind())
    }

    fn insert(&self, lun: Lun) -> Result<(), TargetError> {
        let n = lun.number;
        if n > MAX_LUN {
            return Err(TargetError::BadLun(n));
        }
        let mut map = self.map_mut();
        if map.contains_key(&n) {
            return Err(TargetError::LunExists(n));
        }
        for other in map.values() {
            other
                .state()
                .ua
                .broadcast(UnitAttention::ReportedLunsChanged);
        }
        map.insert(n, Arc::new(lun));
        Ok(())
    }

    /// Attaches a disk at `lun` (hot add: the other LUNs report REPORTED
    /// LUNS DATA HAS CHANGED; the new one starts with POWER ON).
    pub fn add_disk(&self, lun: u16, cfg: DiskConfig) -> Result<(), TargetError> {
        let serial = inquiry::printable(cfg.serial.as_deref().unwrap_or(cfg.backend.id()));
        let id = Identity {
            kind: UnitKind::Disk,
            serial,
            unmap: cfg.unmap,
        };
        let store = cfg
            .reservations
            .unwrap_or_else(|| Arc::new(MemoryStore::new()));
        self.insert(Lun {
            number: lun,
            unit: Unit::Disk(Disk::new(cfg.backend, store)),
            id,
            state: Mutex::new(LunState::default()),
        })
    }

    /// Attaches a DVD drive at `lun`.
    pub fn add_dvd(&self, lun: u16, cfg: DvdConfig) -> Result<(), TargetError> {
        let id = Identity {
            kind: UnitKind::Dvd,
            serial: inquiry::printable(&cfg.serial),
            unmap: false,
        };
        let state = LunState {
            dvd: DvdState {
                medium: cfg.medium,
                ..DvdState::default()
            },
            ..LunState::default()
        };
        self.insert(Lun {
            number: lun,
            unit: Unit::Dvd(Dvd),
            id,
            state: Mutex::new(state),
        })
    }

    /// Detaches `lun` (hot remove); the others report REPORTED LUNS DATA
    /// HAS CHANGED. Returns the disk's backend or the DVD's medium.
    pub fn remove(&self, lun: u16) -> Result<Option<Arc<dyn BlockBackend>>, TargetError> {
        let mut map = self.map_mut();
        let l = map.remove(&lun).ok_or(TargetError::NoSuchLun(lun))?;
        for other in map.values() {
            other
                .state()
                .ua
                .broadcast(UnitAttention::ReportedLunsChanged);
        }
        Ok(match &l.unit {
            Unit::Disk(d) => Some(d.backend().clone()),
            Unit::Dvd(_) => l.state().dvd.medium.take(),
        })
    }

    fn disk_lun(&self, lun: u16) -> Result<Arc<Lun>, TargetError> {
        let l = self.get(lun)?;
        match l.unit {
            Unit::Disk(_) => Ok(l),
            Unit::Dvd(_) => Err(TargetError::WrongKind {
                lun,
                wanted: "disk",
            }),
        }
    }

    fn dvd_lun(&self, lun: u16) -> Result<Arc<Lun>, TargetError> {
        let l = self.get(lun)?;
        match l.unit {
            Unit::Dvd(_) => Ok(l),
            Unit::Disk(_) => Err(TargetError::WrongKind {
                lun,
                wanted: "DVD drive",
            }),
        }
    }

    /// Resizes a disk's backend (online resize) and tells every initiator
    /// CAPACITY DATA HAS CHANGED.
    pub fn resize(
        &self,
        lun: u16,
        new_size: u64,
        policy: &ResizePolicy,
    ) -> Result<(), TargetError> {
        let l = self.disk_lun(lun)?;
        if let Unit::Disk(d) = &l.unit {
            d.backend()
                .resize(new_size, policy)
                .map_err(|source| TargetError::Block { lun, source })?;
        }
        l.state().ua.broadcast(UnitAttention::CapacityChanged);
        Ok(())
    }

    /// Raises CAPACITY DATA HAS CHANGED after the backend was resized by
    /// someone else (another worker of a shared disk).
    pub fn capacity_changed(&self, lun: u16) -> Result<(), TargetError> {
        self.disk_lun(lun)?
            .state()
            .ua
            .broadcast(UnitAttention::CapacityChanged);
        Ok(())
    }

    /// Puts a medium into a DVD drive from the host: the tray closes, the
    /// guest gets a NEW MEDIA event and MEDIUM MAY HAVE CHANGED. Replacing
    /// a medium the guest prevents removal of is refused (and the guest is
    /// sent an eject request).
    pub fn insert_medium(
        &self,
        lun: u16,
        medium: Arc<dyn BlockBackend>,
    ) -> Result<(), TargetError> {
        let l = self.dvd_lun(lun)?;
        let mut st = l.state();
        if st.dvd.medium.is_some() && !st.dvd.tray_open && st.dvd.prevented() {
            st.dvd.event = Some(MediaEvent::EjectRequest);
            return Err(TargetError::RemovalPrevented(lun));
        }
        st.dvd.medium = Some(medium);
        st.dvd.tray_open = false;
        st.dvd.event = Some(MediaEvent::NewMedia);
        st.ua.broadcast(UnitAttention::MediumMayHaveChanged);
        Ok(())
    }

    /// Takes the medium out of a DVD drive from the host (the tray stays
    /// closed, the drive is empty: MEDIUM NOT PRESENT - TRAY CLOSED). While
    /// the guest prevents removal this fails unless `force` (the guest is
    /// sent an eject request either way, as a drive's button does).
    pub fn eject_medium(
        &self,
        lun: u16,
        force: bool,
    ) -> Result<Option<Arc<dyn BlockBackend>>, TargetError> {
        let l = self.dvd_lun(lun)?;
        let mut st = l.state();
        if st.dvd.prevented() && !force {
            st.dvd.event = Some(MediaEvent::EjectRequest);
            return Err(TargetError::RemovalPrevented(lun));
        }
        let m = st.dvd.medium.take();
        st.dvd.tray_open = false;
        if m.is_some() {
            st.dvd.event = Some(MediaEvent::MediaRemoval);
        }
        Ok(m)
    }

    /// True when the DVD drive at `lun` holds a medium with its tray closed.
    pub fn medium_present(&self, lun: u16) -> Result<bool, TargetError> {
        Ok(self.dvd_lun(lun)?.state().dvd.present())
    }

    /// A reset (SAM-5 6.3): every initiator gets POWER ON again; DVD
    /// removal prevention ends.
    pub fn reset(&self) {
        for l in self.map().values() {
            let mut st = l.state();
            st.ua.reset();
            st.dvd.prevent.clear();
        }
    }

    /// A LOGICAL UNIT RESET of `lun` (SAM-5 7.8): its initiators get POWER
    /// ON again and DVD removal prevention ends.
    pub fn reset_lun(&self, lun: u16) -> Result<(), TargetError> {
        let l = self.get(lun)?;
        let mut st = l.state();
        st.ua.reset();
        st.dvd.prevent.clear();
        Ok(())
    }

    /// An I_T NEXUS RESET (SAM-5 7.12): `nexus` gets POWER ON again on
    /// every LUN and its medium-removal prevention ends; other initiators
    /// are not affected.
    pub fn reset_nexus(&self, nexus: &NexusId) {
        for l in self.map().values() {
            let mut st = l.state();
            st.ua.reset_nexus(nexus);
            st.dvd.prevent.remove(nexus);
        }
    }

    /// Runs one command from `nexus` to `lun`. `cdb` may be longer than the
    /// command (transports pad it); `data_out` is what the initiator sent;
    /// `data_in_len` is the size of its data-in buffer. Never panics on
    /// any input.
    pub fn execute(
        &self,
        nexus: &NexusId,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        data_in_len: usize,
    ) -> Response {
        let ctx = Ctx {
            nexus,
            data_out,
            data_in_len,
        };
        let found = self.map().get(&lun).cloned();
        match found {
            Some(l) => l.execute(self, &ctx, cdb),
            None => self.no_lun(&ctx, cdb),
        }
    }

    /// A command to a LUN that does not exist (SPC-4 6.6.2, 6.33, 6.39).
    fn no_lun(&self, ctx: &Ctx<'_>, cdb: &[u8]) -> Response {
        let not_supported = Sense::illegal(Asc::LUN_NOT_SUPPORTED);
        match cdb.first().copied() {
            Some(op::INQUIRY | op::REPORT_LUNS | op::REQUEST_SENSE) => {}
            _ => return Response::check(&not_supported, false, ctx.data_in_len),
        }
        match cdb::parse(cdb) {
            Err(s) => Response::check(&s, false, ctx.data_in_len),
            Ok(Command::Inquiry {
                evpd: false,
                alloc: a,
                ..
            }) => Response::good(alloc(inquiry::no_lun(), a), ctx.data_in_len),
            Ok(Command::ReportLuns { select, alloc: a }) => {
                Response::good(alloc(self.report_luns(select), a), ctx.data_in_len)
            }
            Ok(Command::RequestSense { desc, alloc: a }) => {
                Response::good(alloc(not_supported.encode(desc), a), ctx.data_in_len)
            }
            Ok(_) => Response::check(&not_supported, false, ctx.data_in_len),
        }
    }

    /// REPORT LUNS data (SPC-4 6.33): peripheral device addressing below
    /// 256, flat space above.
    fn report_luns(&self, select: u8) -> Vec<u8> {
        // SELECT REPORT 01h asks for well-known LUNs only: there are none.
        let luns = if select == 1 { Vec::new() } else { self.luns() };
        let mut d = Vec::with_capacity(8 + 8 * luns.len());
        d.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for n in luns {
            d.extend_from_slice(&lun_to_sam(n));
        }
        d
    }

    /// The target's saved state: per LUN its unit attentions, mode
    /// parameters, tray and prevention, and reservations kept in memory
    /// (a file-backed store's reservations stay in their file).
    pub fn save(&self) -> Result<TargetSaved, TargetError> {
        let mut luns = Vec::new();
        for (&n, l) in self.map().iter() {
            let reservations = match &l.unit {
                Unit::Disk(d) => d
                    .store()
                    .saved()
                    .map_err(|source| TargetError::Store { lun: n, source })?,
                Unit::Dvd(_) => None,
            };
            let st = l.state();
            luns.push(LunSaved {
                lun: n,
                kind: match l.kind() {
                    UnitKind::Disk => LunKindSaved::Disk,
                    UnitKind::Dvd => LunKindSaved::Dvd,
                },
                unit_attentions: st.ua.save(),
                wce: st.mode.wce,
                d_sense: st.mode.d_sense,
                dvd: match l.unit {
                    Unit::Dvd(_) => Some(st.dvd.save()),
                    Unit::Disk(_) => None,
                },
                reservations,
            });
        }
        Ok(TargetSaved {
            version: TargetSaved::VERSION,
            luns,
        })
    }

    /// Puts a saved state back into a target built with the same LUNs (the
    /// host reattaches disks and DVD media first; the saved state holds
    /// no backends).
    pub fn restore(&self, saved: &TargetSaved) -> Result<(), TargetError> {
        if saved.version != TargetSaved::VERSION {
            return Err(TargetError::SavedVersion(saved.version));
        }
        let map = self.map();
        // Check everything before changing anything.
        if saved.luns.len() != map.len() {
            let missing = map
                .keys()
                .find(|k| !saved.luns.iter().any(|s| s.lun == **k))
                .or_else(|| {
                    saved
                        .luns
                        .iter()
                        .map(|s| &s.lun)
                        .find(|k| !map.contains_key(k))
                })
                .copied()
                .unwrap_or(0);
            return Err(TargetError::SavedMismatch(missing));
        }
        for s in &saved.luns {
            let l = map.get(&s.lun).ok_or(TargetError::SavedMismatch(s.lun))?;
            let kind_ok = matches!(
                (&l.unit, s.kind, &s.dvd),
                (Unit::Disk(_), LunKindSaved::Disk, None)
                    | (Unit::Dvd(_), LunKindSaved::Dvd, Some(_))
            );
            if !kind_ok {
                return Err(TargetError::SavedMismatch(s.lun));
            }
        }
        for s in &saved.luns {
            let Some(l) = map.get(&s.lun) else { continue };
            if let (Unit::Disk(d), Some(r)) = (&l.unit, &s.reservations) {
                d.store()
                    .restore(r)
                    .map_err(|source| TargetError::Store { lun: s.lun, source })?;
            }
            let mut st = l.state();
            st.ua = UaQueues::restore(&s.unit_attentions);
            st.mode = ModeState {
                wce: s.wce,
                d_sense: s.d_sense,
            };
            if let Some(dvd) = &s.dvd {
                st.dvd.restore(dvd);
            }
        }
        Ok(())
    }
}

/// A LUN number as the 8-byte SAM LUN: peripheral device addressing
/// (00b) below 256, flat space (01b) otherwise.
pub fn lun_to_sam(n: u16) -> [u8; 8] {
    let mut l = [0u8; 8];
    if n < 256 {
        l[1] = n as u8;
    } else {
        l[0] = 0x40 | ((n >> 8) as u8 & 0x3F);
        l[1] = n as u8;
    }
    l
}

/// The LUN number of an 8-byte SAM LUN in the single-level peripheral or
/// flat space formats; `None` for other formats or nonzero lower levels.
pub fn lun_from_sam(l: &[u8; 8]) -> Option<u16> {
    if l[2..].iter().any(|&b| b != 0) {
        return None;
    }
    match l[0] >> 6 {
        0 if l[0] == 0 => Some(l[1] as u16),
        1 => Some((((l[0] & 0x3F) as u16) << 8) | l[1] as u16),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sam_lun_forms() {
        for n in [0u16, 1, 255, 256, 0x3FFF] {
            assert_eq!(lun_from_sam(&lun_to_sam(n)), Some(n));
        }
        assert_eq!(lun_to_sam(5), [0, 5, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lun_to_sam(0x123), [0x41, 0x23, 0, 0, 0, 0, 0, 0]);
        assert_eq!(lun_from_sam(&[0, 1, 0, 1, 0, 0, 0, 0]), None);
        assert_eq!(lun_from_sam(&[0x80, 1, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(lun_from_sam(&[0x01, 1, 0, 0, 0, 0, 0, 0]), None);
    }
}
