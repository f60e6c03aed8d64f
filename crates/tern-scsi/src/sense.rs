//! Sense data (SPC-4 4.5): what a CHECK CONDITION carries, in the fixed
//! (70h) or descriptor (72h) format.

/// Sense keys (SPC-4 table 28).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SenseKey {
    /// Nothing to report.
    NoSense = 0x0,
    /// The unit is not ready (no medium, tray open).
    NotReady = 0x2,
    /// The medium could not be read or written.
    MediumError = 0x3,
    /// A failure in the target itself.
    HardwareError = 0x4,
    /// The command or its parameters are wrong.
    IllegalRequest = 0x5,
    /// Something changed that the initiator must hear about.
    UnitAttention = 0x6,
    /// A write to a write-protected unit.
    DataProtect = 0x7,
    /// The command was aborted.
    AbortedCommand = 0xB,
    /// VERIFY found different data.
    Miscompare = 0xE,
}

/// An additional sense code and qualifier (SPC-4 table D.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asc(pub u8, pub u8);

impl Asc {
    /// 00/00 NO ADDITIONAL SENSE INFORMATION.
    pub const NONE: Asc = Asc(0x00, 0x00);
    /// 0C/00 WRITE ERROR.
    pub const WRITE_ERROR: Asc = Asc(0x0C, 0x00);
    /// 11/00 UNRECOVERED READ ERROR.
    pub const UNRECOVERED_READ_ERROR: Asc = Asc(0x11, 0x00);
    /// 1A/00 PARAMETER LIST LENGTH ERROR.
    pub const PARAMETER_LIST_LENGTH_ERROR: Asc = Asc(0x1A, 0x00);
    /// 1D/00 MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE_DURING_VERIFY: Asc = Asc(0x1D, 0x00);
    /// 20/00 INVALID COMMAND OPERATION CODE.
    pub const INVALID_COMMAND_OPERATION_CODE: Asc = Asc(0x20, 0x00);
    /// 21/00 LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Asc = Asc(0x21, 0x00);
    /// 24/00 INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Asc = Asc(0x24, 0x00);
    /// 25/00 LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Asc = Asc(0x25, 0x00);
    /// 26/00 INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Asc = Asc(0x26, 0x00);
    /// 26/04 INVALID RELEASE OF PERSISTENT RESERVATION.
    pub const INVALID_RELEASE_OF_PR: Asc = Asc(0x26, 0x04);
    /// 27/00 WRITE PROTECTED.
    pub const WRITE_PROTECTED: Asc = Asc(0x27, 0x00);
    /// 28/00 NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    pub const MEDIUM_MAY_HAVE_CHANGED: Asc = Asc(0x28, 0x00);
    /// 29/00 POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    pub const POWER_ON_RESET: Asc = Asc(0x29, 0x00);
    /// 2A/01 MODE PARAMETERS CHANGED.
    pub const MODE_PARAMETERS_CHANGED: Asc = Asc(0x2A, 0x01);
    /// 2A/03 RESERVATIONS PREEMPTED.
    pub const RESERVATIONS_PREEMPTED: Asc = Asc(0x2A, 0x03);
    /// 2A/04 RESERVATIONS RELEASED.
    pub const RESERVATIONS_RELEASED: Asc = Asc(0x2A, 0x04);
    /// 2A/05 REGISTRATIONS PREEMPTED.
    pub const REGISTRATIONS_PREEMPTED: Asc = Asc(0x2A, 0x05);
    /// 2A/09 CAPACITY DATA HAS CHANGED.
    pub const CAPACITY_DATA_CHANGED: Asc = Asc(0x2A, 0x09);
    /// 39/00 SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Asc = Asc(0x39, 0x00);
    /// 3A/00 MEDIUM NOT PRESENT.
    pub const MEDIUM_NOT_PRESENT: Asc = Asc(0x3A, 0x00);
    /// 3A/01 MEDIUM NOT PRESENT - TRAY CLOSED.
    pub const MEDIUM_NOT_PRESENT_TRAY_CLOSED: Asc = Asc(0x3A, 0x01);
    /// 3A/02 MEDIUM NOT PRESENT - TRAY OPEN.
    pub const MEDIUM_NOT_PRESENT_TRAY_OPEN: Asc = Asc(0x3A, 0x02);
    /// 3F/0E REPORTED LUNS DATA HAS CHANGED.
    pub const REPORTED_LUNS_CHANGED: Asc = Asc(0x3F, 0x0E);
    /// 44/00 INTERNAL TARGET FAILURE.
    pub const INTERNAL_TARGET_FAILURE: Asc = Asc(0x44, 0x00);
    /// 4B/00 DATA PHASE ERROR (the transport's buffers do not fit the command).
    pub const DATA_PHASE_ERROR: Asc = Asc(0x4B, 0x00);
    /// 53/02 MEDIUM REMOVAL PREVENTED.
    pub const MEDIUM_REMOVAL_PREVENTED: Asc = Asc(0x53, 0x02);
}

/// Where in the CDB or parameter list the bad field is (the sense-key
/// specific field pointer, SPC-4 4.5.2.4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldPointer {
    /// True for a CDB field, false for a parameter-list field.
    pub in_cdb: bool,
    /// Byte offset of the field.
    pub byte: u16,
    /// The bit within the byte, when one bit is meant.
    pub bit: Option<u8>,
}

/// One sense condition, before encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// The sense key.
    pub key: SenseKey,
    /// ASC and ASCQ.
    pub asc: Asc,
    /// The INFORMATION field (e.g. the first bad LBA of a VERIFY).
    pub information: Option<u64>,
    /// The field pointer of an ILLEGAL REQUEST.
    pub field: Option<FieldPointer>,
}

/// Length of fixed-format sense data as this target builds it.
pub const FIXED_SENSE_LEN: usize = 18;

impl Sense {
    /// A condition without information or field pointer.
    pub const fn new(key: SenseKey, asc: Asc) -> Sense {
        Sense {
            key,
            asc,
            information: None,
            field: None,
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN CDB pointing at `byte` (and `bit`).
    pub fn invalid_cdb(byte: usize, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: true,
                byte: byte as u16,
                bit,
            }),
            ..Sense::new(SenseKey::IllegalRequest, Asc::INVALID_FIELD_IN_CDB)
        }
    }

    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST pointing at `byte`.
    pub fn invalid_param(byte: usize, bit: Option<u8>) -> Sense {
        Sense {
            field: Some(FieldPointer {
                in_cdb: false,
                byte: byte.min(u16::MAX as usize) as u16,
                bit,
            }),
            ..Sense::new(
                SenseKey::IllegalRequest,
                Asc::INVALID_FIELD_IN_PARAMETER_LIST,
            )
        }
    }

    /// ILLEGAL REQUEST with `asc` and no pointer.
    pub const fn illegal(asc: Asc) -> Sense {
        Sense::new(SenseKey::IllegalRequest, asc)
    }

    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const fn invalid_opcode() -> Sense {
        Sense::illegal(Asc::INVALID_COMMAND_OPERATION_CODE)
    }

    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const fn lba_out_of_range() -> Sense {
        Sense::illegal(Asc::LBA_OUT_OF_RANGE)
    }

    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub const fn param_list_length() -> Sense {
        Sense::illegal(Asc::PARAMETER_LIST_LENGTH_ERROR)
    }

    /// DATA PROTECT / WRITE PROTECTED.
    pub const fn write_protected() -> Sense {
        Sense::new(SenseKey::DataProtect, Asc::WRITE_PROTECTED)
    }

    /// The sense-key specific bytes (SKSV set) for a field pointer.
    fn sks(&self) -> Option<[u8; 3]> {
        let f = self.field?;
        let mut b0 = 0x80u8;
        if f.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = f.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = f.byte.to_be_bytes();
        Some([b0, hi, lo])
    }

    /// Fixed-format sense data (response code 70h, SPC-4 4.5.3).
    pub fn fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; FIXED_SENSE_LEN];
        s[0] = 0x70;
        if let Some(info) = self.information {
            // The fixed format's INFORMATION field has 4 bytes; VALID is
            // only set when the value fits.
            if let Ok(v) = u32::try_from(info) {
                s[0] |= 0x80;
                s[3..7].copy_from_slice(&v.to_be_bytes());
            }
        }
        s[2] = self.key as u8;
        s[7] = (FIXED_SENSE_LEN - 8) as u8;
        s[12] = self.asc.0;
        s[13] = self.asc.1;
        if let Some(sks) = self.sks() {
            s[15..18].copy_from_slice(&sks);
        }
        s
    }

    /// Descriptor-format sense data (response code 72h, SPC-4 4.5.2) with
    /// an information descriptor and a sense-key specific descriptor when
    /// they apply.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut s = vec![0x72, self.key as u8, self.asc.0, self.asc.1, 0, 0, 0, 0];
        if let Some(info) = self.information {
            s.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            s.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sks() {
            s.extend_from_slice(&[0x02, 0x06, 0x00, sks[0], sks[1], sks[2], 0x00, 0x00]);
        }
        s[7] = (s.len() - 8) as u8;
        s
    }

    /// Encodes in the format `descriptor` asks for.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.descriptor()
        } else {
            self.fixed()
        }
    }
}

/// Reads the key, ASC and ASCQ back out of sense data of either format
/// (for tests and for initiators built on this crate).
pub fn parse_key_asc(sense: &[u8]) -> Option<(u8, Asc)> {
    match sense.first()? & 0x7F {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0F, Asc(sense[12], sense[13]))),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0F, Asc(sense[2], sense[3]))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_with_field_pointer() {
        let s = Sense::invalid_cdb(2, Some(5)).fixed();
        assert_eq!(s.len(), 18);
        assert_eq!(s[0], 0x70);
        assert_eq!(s[2], 0x05);
        assert_eq!(s[7], 10);
        assert_eq!((s[12], s[13]), (0x24, 0x00));
        assert_eq!(&s[15..18], &[0x80 | 0x40 | 0x08 | 5, 0, 2]);
    }

    #[test]
    fn descriptor_format_with_information() {
        let s = Sense {
            information: Some(0x1_0000_0000),
            ..Sense::new(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY)
        };
        let d = s.descriptor();
        assert_eq!(&d[..4], &[0x72, 0x0E, 0x1D, 0x00]);
        assert_eq!(d[7] as usize, d.len() - 8);
        assert_eq!(&d[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(&d[12..20], &0x1_0000_0000u64.to_be_bytes());
        // Too large for the fixed format's 4 bytes: VALID stays clear.
        assert_eq!(s.fixed()[0], 0x70);
        assert_eq!(
            parse_key_asc(&d),
            Some((0x0E, Asc::MISCOMPARE_DURING_VERIFY))
        );
        assert_eq!(
            parse_key_asc(&s.fixed()),
            Some((0x0E, Asc::MISCOMPARE_DURING_VERIFY))
        );
        assert_eq!(parse_key_asc(&[0x12]), None);
    }
}
