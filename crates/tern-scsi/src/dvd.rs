//! A DVD-ROM drive (MMC-6) over ISO images: 2048-byte blocks, one track,
//! one finished session; a tray the guest and the host open and close.

use std::collections::BTreeSet;
use std::sync::Arc;

use tern_block::BlockBackend;

use crate::cdb::{Command, ConfigRequest, TocFormat, UnitKind};
use crate::inquiry::MAX_DVD_TRANSFER_BLOCKS;
use crate::mode::{self, UnitFacts};
use crate::nexus::NexusId;
use crate::response::{alloc, Fail};
use crate::sense::{Asc, Sense, SenseKey};
use crate::state::{DvdSaved, MediaEventSaved};
use crate::target::{Ctx, Lun};
use crate::ua::UnitAttention;

/// Bytes per DVD block.
pub const DVD_BLOCK: u64 = 2048;

/// A media-class event (MMC-6 table 129).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// Someone asked for the medium to be ejected.
    EjectRequest = 1,
    /// A medium arrived.
    NewMedia = 2,
    /// The medium was removed.
    MediaRemoval = 3,
}

/// A drive's tray and medium.
#[derive(Default)]
pub(crate) struct DvdState {
    /// The medium in the tray (present to the guest when the tray is closed).
    pub medium: Option<Arc<dyn BlockBackend>>,
    /// The guest ejected (opened the tray).
    pub tray_open: bool,
    /// Nexuses that prevent removal (SPC-4 6.13: any one prevents).
    pub prevent: BTreeSet<NexusId>,
    /// The event the next GET EVENT STATUS NOTIFICATION reports.
    pub event: Option<MediaEvent>,
}

impl DvdState {
    pub fn present(&self) -> bool {
        self.medium.is_some() && !self.tray_open
    }

    pub fn prevented(&self) -> bool {
        !self.prevent.is_empty()
    }

    /// NOT READY with the tray's state (MMC-6 table F.1).
    pub fn not_ready(&self) -> Sense {
        let asc = if self.tray_open {
            Asc::MEDIUM_NOT_PRESENT_TRAY_OPEN
        } else {
            Asc::MEDIUM_NOT_PRESENT_TRAY_CLOSED
        };
        Sense::new(SenseKey::NotReady, asc)
    }

    /// The medium, or NOT READY.
    fn medium(&self) -> Result<Arc<dyn BlockBackend>, Sense> {
        match &self.medium {
            Some(m) if !self.tray_open => Ok(m.clone()),
            _ => Err(self.not_ready()),
        }
    }

    pub fn save(&self) -> DvdSaved {
        DvdSaved {
            tray_open: self.tray_open,
            prevent: self.prevent.iter().cloned().collect(),
            event: self.event.map(|e| match e {
                MediaEvent::EjectRequest => MediaEventSaved::EjectRequest,
                MediaEvent::NewMedia => MediaEventSaved::NewMedia,
                MediaEvent::MediaRemoval => MediaEventSaved::MediaRemoval,
            }),
        }
    }

    pub fn restore(&mut self, s: &DvdSaved) {
        self.tray_open = s.tray_open;
        self.prevent = s.prevent.iter().cloned().collect();
        self.event = s.event.map(|e| match e {
            MediaEventSaved::EjectRequest => MediaEvent::EjectRequest,
            MediaEventSaved::NewMedia => MediaEvent::NewMedia,
            MediaEventSaved::MediaRemoval => MediaEvent::MediaRemoval,
        });
    }
}

/// Blocks of a medium.
fn blocks(m: &dyn BlockBackend) -> u64 {
    m.capacity() / DVD_BLOCK
}

/// An LBA as minute/second/frame (MMC-6 6.40: 150 frames of lead-in).
fn msf(lba: u64) -> [u8; 4] {
    let f = lba + 150;
    [
        0,
        (f / (75 * 60)).min(255) as u8,
        ((f / 75) % 60) as u8,
        (f % 75) as u8,
    ]
}

fn address(lba: u64, as_msf: bool) -> [u8; 4] {
    if as_msf {
        msf(lba)
    } else {
        u32::try_from(lba).unwrap_or(u32::MAX).to_be_bytes()
    }
}

/// The DVD-specific part of a logical unit.
pub(crate) struct Dvd;

impl Dvd {
    pub fn run(&self, lun: &Lun, ctx: &Ctx<'_>, cmd: &Command) -> Result<Vec<u8>, Fail> {
        match *cmd {
            Command::TestUnitReady => {
                lun.state().dvd.medium()?;
                Ok(Vec::new())
            }
            Command::ReadCapacity10 => {
                let m = lun.state().dvd.medium()?;
                let last = blocks(&*m).saturating_sub(1);
                let mut d = vec![0u8; 8];
                d[0..4].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
                d[4..8].copy_from_slice(&(DVD_BLOCK as u32).to_be_bytes());
                Ok(d)
            }
            Command::Read { lba, blocks: n, .. } => {
                let m = lun.state().dvd.medium()?;
                let end = lba.checked_add(n as u64);
                if end.is_none_or(|e| e > blocks(&*m)) || (n == 0 && lba >= blocks(&*m)) {
                    return Err(Sense::lba_out_of_range().into());
                }
                if n > MAX_DVD_TRANSFER_BLOCKS {
                    return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CDB).into());
                }
                let len = n as usize * DVD_BLOCK as usize;
                if ctx.data_in_len < len {
                    return Err(Fail::Overrun);
                }
                let mut buf = vec![0u8; len];
                m.read_at(&mut buf, lba * DVD_BLOCK)
                    .map_err(|_| Sense::new(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR))?;
                Ok(buf)
            }
            Command::ModeSense { req, alloc: a } => {
                let st = lun.state();
                let facts = UnitFacts {
                    kind: UnitKind::Dvd,
                    blocks: st.dvd.medium.as_deref().map_or(0, blocks),
                    block_size: DVD_BLOCK as u32,
                    write_protected: true,
                    locked: st.dvd.prevented(),
                };
                Ok(alloc(mode::sense(&req, &st.mode, &facts)?, a))
            }
            Command::StartStopUnit {
                power_condition,
                loej,
                start,
            } => {
                check_power_condition(power_condition)?;
                let mut st = lun.state();
                if power_condition != 0 {
                    return Ok(Vec::new());
                }
                if !loej {
                    if start && !st.dvd.present() {
                        return Err(st.dvd.not_ready().into());
                    }
                    return Ok(Vec::new());
                }
                if start {
                    // Load: close the tray.
                    if st.dvd.tray_open {
                        st.dvd.tray_open = false;
                        if st.dvd.medium.is_some() {
                            st.dvd.event = Some(MediaEvent::NewMedia);
                            st.ua
                                .broadcast_except(ctx.nexus, UnitAttention::MediumMayHaveChanged);
                        }
                    }
                } else {
                    if st.dvd.prevented() {
                        return Err(Sense::illegal(Asc::MEDIUM_REMOVAL_PREVENTED).into());
                    }
                    if !st.dvd.tray_open {
                        st.dvd.tray_open = true;
                        if st.dvd.medium.is_some() {
                            st.dvd.event = Some(MediaEvent::MediaRemoval);
                        }
                    }
                }
                Ok(Vec::new())
            }
            Command::PreventAllow { prevent } => {
                let mut st = lun.state();
                if prevent {
                    st.dvd.prevent.insert(ctx.nexus.clone());
                } else {
                    st.dvd.prevent.remove(ctx.nexus);
                }
                Ok(Vec::new())
            }
            Command::ReadToc {
                msf: as_msf,
                format,
                track,
                alloc: a,
            } => {
                let m = lun.state().dvd.medium()?;
                let mut d = vec![0, 0, 1, 1];
                match format {
                    TocFormat::Toc => {
                        if !matches!(track, 0 | 1 | 0xAA) {
                            return Err(Sense::invalid_cdb(6, None).into());
                        }
                        if track != 0xAA {
                            d.extend_from_slice(&[0, 0x14, 1, 0]);
                            d.extend_from_slice(&address(0, as_msf));
                        }
                        d.extend_from_slice(&[0, 0x14, 0xAA, 0]);
                        d.extend_from_slice(&address(blocks(&*m), as_msf));
                    }
                    TocFormat::SessionInfo => {
                        d.extend_from_slice(&[0, 0x14, 1, 0]);
                        d.extend_from_slice(&address(0, as_msf));
                    }
                }
                let len = (d.len() - 2) as u16;
                d[0..2].copy_from_slice(&len.to_be_bytes());
                Ok(alloc(d, a))
            }
            Command::GetConfiguration {
                rt,
                start,
                alloc: a,
            } => {
                let present = lun.state().dvd.present();
                Ok(alloc(configuration(present, rt, start), a))
            }
            Command::GetEventStatus { classes, alloc: a } => {
                let mut st = lun.state();
                let d = if classes & 0x10 != 0 {
                    let event = st.dvd.event.take().map_or(0, |e| e as u8);
                    let status = ((st.dvd.present() as u8) << 1) | st.dvd.tray_open as u8;
                    vec![0, 6, 0x04, 0x10, event, status, 0, 0]
                } else {
                    // No event of a requested class: NEA.
                    vec![0, 2, 0x80, 0x10]
                };
                Ok(alloc(d, a))
            }
            Command::ReadDiscInformation { alloc: a } => {
                lun.state().dvd.medium()?;
                let mut d = vec![0u8; 34];
                d[1] = 0x20;
                // Not erasable, last session complete, disc finalized.
                d[2] = 0x0E;
                d[3] = 1; // first track
                d[4] = 1; // sessions
                d[5] = 1; // first track in last session
                d[6] = 1; // last track in last session
                d[7] = 0x20; // URU
                d[16..24].copy_from_slice(&[0xFF; 8]);
                Ok(alloc(d, a))
            }
            // The target runs the common commands; the table keeps the
            // others away from DVDs.
            _ => Err(Sense::invalid_opcode().into()),
        }
    }
}

/// START STOP UNIT's power conditions this target accepts (and ignores):
/// START_VALID, ACTIVE, IDLE, STANDBY, LU_CONTROL, FORCE_IDLE_0, FORCE_STANDBY_0.
pub(crate) fn check_power_condition(pc: u8) -> Result<(), Sense> {
    match pc {
        0 | 1 | 2 | 3 | 7 | 0xA | 0xB => Ok(()),
        _ => Err(Sense::invalid_cdb(4, Some(7))),
    }
}

/// GET CONFIGURATION data (MMC-6 5.2, 5.3).
fn configuration(present: bool, rt: ConfigRequest, start: u16) -> Vec<u8> {
    // (code, version, persistent, current, data)
    let profiles: Vec<u8> = vec![0x00, 0x10, present as u8, 0, 0x00, 0x08, 0, 0];
    let features: Vec<(u16, u8, bool, bool, Vec<u8>)> = vec![
        (0x0000, 0, true, true, profiles),
        // Core: physical interface SCSI family; INQ2.
        (0x0001, 2, true, true, vec![0, 0, 0, 1, 0x02, 0, 0, 0]),
        // Morphing: OCEvent (polled event status).
        (0x0002, 1, true, true, vec![0x02, 0, 0, 0]),
        // Removable medium: tray, eject, lock.
        (0x0003, 0, true, true, vec![(1 << 5) | 0x08 | 0x01, 0, 0, 0]),
        // Random readable: 2048-byte blocks, blocking 16.
        (0x0010, 0, false, present, vec![0, 0, 0x08, 0, 0, 16, 0, 0]),
        // DVD read.
        (0x001F, 1, false, present, vec![0, 0, 0, 0]),
    ];
    let mut d = vec![0u8; 8];
    if present {
        d[6..8].copy_from_slice(&0x0010u16.to_be_bytes());
    }
    for (code, version, persistent, current, data) in features {
        let wanted = match rt {
            ConfigRequest::All => code >= start,
            ConfigRequest::Current => code >= start && current,
            ConfigRequest::One => code == start,
        };
        if !wanted {
            continue;
        }
        d.extend_from_slice(&code.to_be_bytes());
        d.push((version << 2) | ((persistent as u8) << 1) | current as u8);
        d.push(data.len() as u8);
        d.extend(data);
    }
    let len = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&len.to_be_bytes());
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msf_addresses() {
        assert_eq!(msf(0), [0, 0, 2, 0]);
        assert_eq!(msf(75 * 60 - 150), [0, 1, 0, 0]);
        assert_eq!(msf(1), [0, 0, 2, 1]);
    }

    #[test]
    fn configuration_lists() {
        let all = configuration(true, ConfigRequest::All, 0);
        assert_eq!(
            u32::from_be_bytes([all[0], all[1], all[2], all[3]]) as usize,
            all.len() - 4
        );
        assert_eq!(&all[6..8], &[0x00, 0x10]);
        // Profile list first, DVD-ROM current.
        assert_eq!(&all[8..12], &[0, 0, 0x03, 8]);
        assert_eq!(&all[12..16], &[0, 0x10, 1, 0]);
        let none = configuration(false, ConfigRequest::Current, 0);
        assert_eq!(&none[6..8], &[0, 0]);
        assert!(!none.windows(2).any(|w| w == [0x00, 0x1F]));
        let one = configuration(true, ConfigRequest::One, 0x001F);
        assert_eq!(&one[8..12], &[0, 0x1F, 0x05, 4]);
        assert_eq!(one.len(), 16);
        assert_eq!(
            check_power_condition(5),
            Err(Sense::invalid_cdb(4, Some(7)))
        );
    }
}
