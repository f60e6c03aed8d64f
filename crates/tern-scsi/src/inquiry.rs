//! INQUIRY data (SPC-4 6.6) and the vital product data pages (SPC-4 7.8,
//! SBC-4 6.6).

use crate::cdb::UnitKind;
use crate::nexus::fnv1a;
use crate::sense::Sense;

/// Vendor identification (8 bytes, space padded).
pub const VENDOR: &[u8; 8] = b"TERN    ";

/// The most blocks one READ, WRITE or VERIFY may move (B0h's MAXIMUM
/// TRANSFER LENGTH): bounds the memory a request takes (32 MiB of 512-byte
/// blocks). libiscsi's WRITE SAME tests write 65536 blocks in one command
/// whenever WRITE SAME allows that many.
pub const MAX_TRANSFER_BLOCKS: u32 = 65536;
/// The most 2048-byte blocks one DVD READ may move (32 MiB).
pub const MAX_DVD_TRANSFER_BLOCKS: u32 = 16384;
/// The most blocks one WRITE SAME may cover.
pub const MAX_WRITE_SAME_BLOCKS: u32 = 0x0040_0000;
/// The most blocks one UNMAP may cover (libiscsi's block-limits test
/// takes more than 1 Mi blocks as implausible).
pub const MAX_UNMAP_BLOCKS: u32 = 0x0010_0000;
/// The most descriptors one UNMAP may carry.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;

/// What INQUIRY reports about a unit.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Disk or DVD.
    pub kind: UnitKind,
    /// Unit serial number (printable ASCII).
    pub serial: String,
    /// UNMAP and WRITE SAME with UNMAP are supported.
    pub unmap: bool,
}

impl Identity {
    fn peripheral(&self) -> u8 {
        match self.kind {
            UnitKind::Disk => 0x00,
            UnitKind::Dvd => 0x05,
        }
    }

    /// The NAA designator: NAA 3 (locally assigned), 60 bits hashed from
    /// the serial, so every worker that opens the same disk reports the
    /// same id (clusters match disks by it).
    pub fn naa(&self) -> u64 {
        (3u64 << 60) | (fnv1a(self.serial.as_bytes()) & 0x0FFF_FFFF_FFFF_FFFF)
    }

    /// Standard INQUIRY data.
    pub fn standard(&self) -> Vec<u8> {
        let mut d = vec![0u8; 66];
        d[0] = self.peripheral();
        if self.kind == UnitKind::Dvd {
            d[1] = 0x80; // RMB
        }
        d[2] = 0x06; // SPC-4
        d[3] = 0x12; // HISUP, response data format 2
        d[4] = (d.len() - 5) as u8;
        d[7] = 0x02; // CMDQUE
        d[8..16].copy_from_slice(VENDOR);
        let product: &[u8; 16] = match self.kind {
            UnitKind::Disk => b"VIRTUAL DISK    ",
            UnitKind::Dvd => b"VIRTUAL DVD-ROM ",
        };
        d[16..32].copy_from_slice(product);
        d[32..36].copy_from_slice(b"0001");
        // Version descriptors: SAM-5, SPC-4, and SBC-3 for disks.
        d[58..60].copy_from_slice(&0x00A0u16.to_be_bytes());
        d[60..62].copy_from_slice(&0x0460u16.to_be_bytes());
        if self.kind == UnitKind::Disk {
            d[62..64].copy_from_slice(&0x04C0u16.to_be_bytes());
        }
        d
    }

    fn pages(&self) -> &'static [u8] {
        match (self.kind, self.unmap) {
            (UnitKind::Disk, _) => &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2],
            (UnitKind::Dvd, _) => &[0x00, 0x80, 0x83],
        }
    }

    /// A VPD page; INVALID FIELD IN CDB for one this unit lacks.
    pub fn vpd(&self, page: u8) -> Result<Vec<u8>, Sense> {
        if !self.pages().contains(&page) {
            return Err(Sense::invalid_cdb(2, None));
        }
        let mut body: Vec<u8> = match page {
            0x00 => self.pages().to_vec(),
            0x80 => self.serial.as_bytes().to_vec(),
            0x83 => {
                let mut b = Vec::new();
                // NAA, binary, LU association.
                b.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
                b.extend_from_slice(&self.naa().to_be_bytes());
                // T10 vendor id, ASCII: vendor + serial.
                let mut t10 = VENDOR.to_vec();
                t10.extend_from_slice(self.serial.as_bytes());
                b.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
                b.extend(t10);
                b
            }
            0xB0 => {
                let mut b = vec![0u8; 0x3C];
                b[0] = 0x01; // WSNZ: a WRITE SAME of 0 blocks is refused
                b[2..4].copy_from_slice(&8u16.to_be_bytes()); // 4 KiB granularity
                b[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
                b[8..12].copy_from_slice(&2048u32.to_be_bytes());
                if self.unmap {
                    b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                    b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                    b[24..28].copy_from_slice(&8u32.to_be_bytes());
                }
                b[32..40].copy_from_slice(&(MAX_WRITE_SAME_BLOCKS as u64).to_be_bytes());
                b
            }
            0xB1 => {
                let mut b = vec![0u8; 0x3C];
                b[1] = 0x01; // non-rotating medium
                b
            }
            _ => {
                // B2h: LBPU, LBPWS, LBPWS10; thin provisioned when unmapping.
                if self.unmap {
                    vec![0, 0xE0, 0x02, 0]
                } else {
                    vec![0, 0, 0, 0]
                }
            }
        };
        let mut d = vec![self.peripheral(), page];
        // Our pages are all shorter than 64 KiB.
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.append(&mut body);
        Ok(d)
    }
}

/// INQUIRY data for a LUN that does not exist: peripheral qualifier 011b,
/// type 1Fh (SPC-4 6.6.2).
pub fn no_lun() -> Vec<u8> {
    let mut d = vec![0u8; 36];
    d[0] = 0x7F;
    d[2] = 0x06;
    d[3] = 0x12;
    d[4] = 31;
    d[8..16].copy_from_slice(VENDOR);
    d
}

/// A serial made printable: VPD 80h is ASCII.
pub fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        let id = Identity {
            kind: UnitKind::Disk,
            serial: "disk0".into(),
            unmap: true,
        };
        let s = id.standard();
        assert_eq!(s[4] as usize + 5, s.len());
        assert_eq!(&s[16..28], b"VIRTUAL DISK");
        assert_eq!(
            id.vpd(0).unwrap(),
            vec![0, 0, 0, 6, 0, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
        );
        assert_eq!(&id.vpd(0x80).unwrap()[4..], b"disk0");
        let d = id.vpd(0x83).unwrap();
        assert_eq!(&d[4..8], &[1, 3, 0, 8]);
        assert_eq!(d[8] >> 4, 3);
        assert_eq!(&d[16..20], &[2, 1, 0, 13]);
        assert_eq!(&d[20..33], b"TERN    disk0");
        assert_eq!(id.vpd(0xB2).unwrap(), vec![0, 0xB2, 0, 4, 0, 0xE0, 2, 0]);
        assert_eq!(id.vpd(0xB0).unwrap().len(), 64);
        assert_eq!(id.vpd(0x86), Err(Sense::invalid_cdb(2, None)));
        let dvd = Identity {
            kind: UnitKind::Dvd,
            serial: "dvd".into(),
            unmap: false,
        };
        assert_eq!(dvd.standard()[0], 5);
        assert_eq!(dvd.standard()[1], 0x80);
        assert_eq!(dvd.vpd(0xB0), Err(Sense::invalid_cdb(2, None)));
        assert_eq!(printable("a b\u{e9}"), "a_b_");
    }
}
