//! Mode parameters (SPC-4 7.5): MODE SENSE and MODE SELECT over the pages
//! this target has: caching (08h, SBC-4 6.5.5) and control (0Ah, SPC-4
//! 7.5.8) on disks, capabilities (2Ah, MMC-6 7.8 in its MMC-3 form) on
//! DVDs. Only WCE and D_SENSE are changeable; nothing is saved.

use crate::cdb::{PageControl, UnitKind};
use crate::sense::{Asc, Sense};

/// Current mode parameters of a logical unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeState {
    /// Write cache enabled: without it every write is flushed before GOOD.
    pub wce: bool,
    /// Sense data in descriptor format.
    pub d_sense: bool,
}

impl Default for ModeState {
    fn default() -> ModeState {
        ModeState {
            wce: true,
            d_sense: false,
        }
    }
}

/// What MODE SENSE needs to know about the unit besides its mode state.
#[derive(Clone, Copy, Debug)]
pub struct UnitFacts {
    /// Disk or DVD.
    pub kind: UnitKind,
    /// Logical blocks.
    pub blocks: u64,
    /// Bytes per block.
    pub block_size: u32,
    /// Writes refused.
    pub write_protected: bool,
    /// DVD: removal prevented.
    pub locked: bool,
}

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const CAPABILITIES: u8 = 0x2A;
const ALL_PAGES: u8 = 0x3F;

fn pages_of(kind: UnitKind) -> &'static [u8] {
    match kind {
        UnitKind::Disk => &[CACHING, CONTROL],
        UnitKind::Dvd => &[CAPABILITIES],
    }
}

/// One page's bytes under `pc` (not Saved).
fn page(code: u8, pc: PageControl, st: &ModeState, facts: &UnitFacts) -> Vec<u8> {
    let values = match pc {
        PageControl::Default => ModeState::default(),
        _ => *st,
    };
    let changeable = pc == PageControl::Changeable;
    match code {
        CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = CACHING;
            p[1] = 0x12;
            p[2] = if changeable || values.wce { 0x04 } else { 0 };
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = CONTROL;
            p[1] = 0x0A;
            p[2] = if changeable || values.d_sense {
                0x04
            } else {
                0
            };
            if !changeable {
                // Unrestricted reordering; busy timeout unlimited.
                p[3] = 0x10;
                p[8] = 0xFF;
                p[9] = 0xFF;
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 22];
            p[0] = CAPABILITIES;
            p[1] = 0x14;
            if !changeable {
                // DVD-ROM, CD-RW and CD-R read; multi-session; a tray that
                // ejects and locks.
                p[2] = 0x0B;
                p[4] = 0x40;
                p[6] = (1 << 5) | 0x08 | ((facts.locked as u8) << 1) | 0x01;
            }
            p
        }
    }
}

/// What a MODE SENSE asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseRequest {
    /// The 10-byte form.
    pub ten: bool,
    /// No block descriptors.
    pub dbd: bool,
    /// Long LBA block descriptor.
    pub llbaa: bool,
    /// Which values.
    pub pc: PageControl,
    /// Page code.
    pub page: u8,
    /// Subpage code.
    pub subpage: u8,
}

/// Builds MODE SENSE data (untruncated).
pub fn sense(r: &SenseRequest, st: &ModeState, facts: &UnitFacts) -> Result<Vec<u8>, Sense> {
    let SenseRequest {
        ten,
        dbd,
        llbaa,
        pc,
        page: page_code,
        subpage,
    } = *r;
    if pc == PageControl::Saved {
        return Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED));
    }
    // No page has subpages: subpage 0, or FFh (all subpages of the page).
    if subpage != 0 && subpage != 0xFF {
        return Err(Sense::invalid_cdb(3, None));
    }
    let available = pages_of(facts.kind);
    let codes: Vec<u8> = if page_code == ALL_PAGES {
        available.to_vec()
    } else if available.contains(&page_code) {
        vec![page_code]
    } else {
        return Err(Sense::invalid_cdb(2, Some(5)));
    };
    let mut body = Vec::new();
    for c in codes {
        body.extend(page(c, pc, st, facts));
    }
    // Disks describe their blocks; MMC units have no block descriptors.
    let descriptor = if dbd || facts.kind == UnitKind::Dvd {
        Vec::new()
    } else if ten && llbaa {
        let mut d = vec![0u8; 16];
        d[0..8].copy_from_slice(&facts.blocks.to_be_bytes());
        d[12..16].copy_from_slice(&facts.block_size.to_be_bytes());
        d
    } else {
        let mut d = vec![0u8; 8];
        let n = u32::try_from(facts.blocks).unwrap_or(u32::MAX);
        d[0..4].copy_from_slice(&n.to_be_bytes());
        d[5..8].copy_from_slice(&facts.block_size.to_be_bytes()[1..4]);
        d
    };
    let device_specific = match facts.kind {
        // WP; DPOFUA (DPO and FUA are honored).
        UnitKind::Disk => ((facts.write_protected as u8) << 7) | 0x10,
        UnitKind::Dvd => 0,
    };
    let mut out = if ten {
        let total = 8 + descriptor.len() + body.len();
        let mut h = vec![0u8; 8];
        h[0..2].copy_from_slice(&((total - 2) as u16).to_be_bytes());
        h[3] = device_specific;
        h[4] = (descriptor.len() == 16) as u8;
        h[6..8].copy_from_slice(&(descriptor.len() as u16).to_be_bytes());
        h
    } else {
        let total = 4 + descriptor.len() + body.len();
        // The 6-byte header's length is one byte; our pages fit.
        vec![
            (total - 1).min(255) as u8,
            0,
            device_specific,
            descriptor.len() as u8,
        ]
    };
    out.extend(descriptor);
    out.extend(body);
    Ok(out)
}

/// Applies a MODE SELECT parameter list (`list`: exactly the parameter
/// list length's bytes) to `st`, returning the new state. Any change to a
/// field that is not changeable, or a page this unit lacks, fails with
/// INVALID FIELD IN PARAMETER LIST pointing at it.
pub fn select(
    ten: bool,
    list: &[u8],
    st: &ModeState,
    facts: &UnitFacts,
) -> Result<ModeState, Sense> {
    let header_len = if ten { 8 } else { 4 };
    if list.is_empty() {
        return Ok(*st);
    }
    if list.len() < header_len {
        return Err(Sense::param_list_length());
    }
    // Mode data length is reserved in MODE SELECT; medium type must be 0;
    // the device-specific parameter is ignored (WP, DPOFUA are not settable).
    let (bd_len, long) = if ten {
        if list[0] != 0 || list[1] != 0 {
            return Err(Sense::invalid_param(0, None));
        }
        if list[2] != 0 {
            return Err(Sense::invalid_param(2, None));
        }
        if list[4] & !1 != 0 || list[5] != 0 {
            return Err(Sense::invalid_param(4, None));
        }
        (
            u16::from_be_bytes([list[6], list[7]]) as usize,
            list[4] & 1 != 0,
        )
    } else {
        if list[0] != 0 {
            return Err(Sense::invalid_param(0, None));
        }
        if list[1] != 0 {
            return Err(Sense::invalid_param(1, None));
        }
        (list[3] as usize, false)
    };
    let want_bd = if long { 16 } else { 8 };
    if bd_len != 0 && bd_len != want_bd {
        return Err(Sense::invalid_param(if ten { 6 } else { 3 }, None));
    }
    let bd_at = header_len;
    let Some(bd) = list.get(bd_at..bd_at + bd_len) else {
        return Err(Sense::param_list_length());
    };
    if bd_len != 0 {
        // The block length cannot change; the block count is ignored.
        let len_at = if long { 12 } else { 4 };
        let got = u32::from_be_bytes([bd[len_at], bd[len_at + 1], bd[len_at + 2], bd[len_at + 3]])
            & if long { u32::MAX } else { 0x00FF_FFFF };
        if got != facts.block_size {
            return Err(Sense::invalid_param(bd_at + len_at, None));
        }
    }
    let mut new = *st;
    let mut at = bd_at + bd_len;
    while at < list.len() {
        let code = list[at] & 0x3F;
        if list[at] & 0x40 != 0 {
            // SPF: no subpages here.
            return Err(Sense::invalid_param(at, Some(6)));
        }
        if !pages_of(facts.kind).contains(&code) || code == CAPABILITIES {
            return Err(Sense::invalid_param(at, Some(5)));
        }
        let current = page(code, PageControl::Current, st, facts);
        let changeable = page(code, PageControl::Changeable, st, facts);
        let Some(&len) = list.get(at + 1) else {
            return Err(Sense::param_list_length());
        };
        if len as usize != current.len() - 2 {
            return Err(Sense::invalid_param(at + 1, None));
        }
        let Some(given) = list.get(at..at + current.len()) else {
            return Err(Sense::param_list_length());
        };
        for i in 2..current.len() {
            let bad = (given[i] ^ current[i]) & !changeable[i];
            if bad != 0 {
                return Err(Sense::invalid_param(
                    at + i,
                    Some(7 - bad.leading_zeros() as u8),
                ));
            }
        }
        match code {
            CACHING => new.wce = given[2] & 0x04 != 0,
            _ => new.d_sense = given[2] & 0x04 != 0,
        }
        at += current.len();
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rq(
        ten: bool,
        dbd: bool,
        llbaa: bool,
        pc: PageControl,
        page: u8,
        subpage: u8,
    ) -> SenseRequest {
        SenseRequest {
            ten,
            dbd,
            llbaa,
            pc,
            page,
            subpage,
        }
    }

    fn disk() -> UnitFacts {
        UnitFacts {
            kind: UnitKind::Disk,
            blocks: 2048,
            block_size: 512,
            write_protected: false,
            locked: false,
        }
    }

    #[test]
    fn sense_all_pages_with_block_descriptor() {
        let st = ModeState::default();
        let d = sense(
            &rq(false, false, false, PageControl::Current, 0x3F, 0),
            &st,
            &disk(),
        )
        .unwrap();
        assert_eq!(d[0] as usize, d.len() - 1);
        assert_eq!(d[2], 0x10);
        assert_eq!(d[3], 8);
        assert_eq!(&d[4..8], &2048u32.to_be_bytes());
        assert_eq!(&d[9..12], &[0, 2, 0]);
        assert_eq!(d[12], 0x08);
        assert_eq!(d[14], 0x04, "WCE");
        assert_eq!(d[32], 0x0A);
        let d = sense(
            &rq(true, false, true, PageControl::Changeable, 0x0A, 0),
            &st,
            &disk(),
        )
        .unwrap();
        assert_eq!(d[4], 1, "LONGLBA");
        assert_eq!(&d[6..8], &[0, 16]);
        assert_eq!(&d[24..27], &[0x0A, 0x0A, 0x04]);
        assert_eq!(
            sense(
                &rq(false, true, false, PageControl::Saved, 8, 0),
                &st,
                &disk()
            ),
            Err(Sense::illegal(Asc::SAVING_PARAMETERS_NOT_SUPPORTED))
        );
        assert_eq!(
            sense(
                &rq(false, true, false, PageControl::Current, 0x2A, 0),
                &st,
                &disk()
            ),
            Err(Sense::invalid_cdb(2, Some(5)))
        );
        assert_eq!(
            sense(
                &rq(false, true, false, PageControl::Current, 8, 1),
                &st,
                &disk()
            ),
            Err(Sense::invalid_cdb(3, None))
        );
    }

    #[test]
    fn select_changes_only_changeable_bits() {
        let st = ModeState::default();
        let cur = sense(
            &rq(false, true, false, PageControl::Current, 0x08, 0),
            &st,
            &disk(),
        )
        .unwrap();
        let mut list = vec![0, 0, 0, 0];
        let mut p = cur[4..].to_vec();
        p[2] = 0;
        list.extend(&p);
        let new = select(false, &list, &st, &disk()).unwrap();
        assert!(!new.wce);
        // RCD (byte 2 bit 0) is not changeable.
        let mut bad = list.clone();
        bad[4 + 2] = 0x01;
        assert_eq!(
            select(false, &bad, &st, &disk()),
            Err(Sense::invalid_param(6, Some(0)))
        );
        // Wrong page length, unknown page, short list, block length.
        let mut bad = list.clone();
        bad[5] = 0x11;
        assert_eq!(
            select(false, &bad, &st, &disk()),
            Err(Sense::invalid_param(5, None))
        );
        let mut bad = list.clone();
        bad[4] = 0x19;
        assert_eq!(
            select(false, &bad, &st, &disk()),
            Err(Sense::invalid_param(4, Some(5)))
        );
        assert_eq!(
            select(false, &list[..10], &st, &disk()),
            Err(Sense::param_list_length())
        );
        let mut bd = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert_eq!(
            select(false, &bd, &st, &disk()),
            Err(Sense::invalid_param(8, None))
        );
        bd[10] = 0x02;
        assert_eq!(select(false, &bd, &st, &disk()), Ok(st));
        // The control page's D_SENSE through the 10-byte form.
        let mut l10 = vec![0u8; 8];
        let mut c = page(CONTROL, PageControl::Current, &st, &disk());
        c[2] = 0x04;
        l10.extend(c);
        assert!(select(true, &l10, &st, &disk()).unwrap().d_sense);
    }
}
