//! The iSCSI PDU codec (RFC 7143 11): the 48-byte basic header segment,
//! additional header segments, the padded data segment and the optional
//! CRC32C header and data digests.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Length of the basic header segment.
pub const BHS_LEN: usize = 48;

/// Opcodes (RFC 7143 11.1.1), without the immediate bit.
pub mod opcode {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// SCSI Task Management Function Request.
    pub const TASK_MGMT: u8 = 0x02;
    /// Login Request.
    pub const LOGIN: u8 = 0x03;
    /// Text Request.
    pub const TEXT: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RSP: u8 = 0x21;
    /// Task Management Function Response.
    pub const TASK_MGMT_RSP: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RSP: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RSP: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RSP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Errors reading or writing a PDU.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The connection failed or closed.
    #[error("connection I/O failed")]
    Io(#[from] std::io::Error),
    /// The header digest does not match.
    #[error("header digest mismatch (got {got:#010x}, computed {want:#010x})")]
    HeaderDigest {
        /// Received.
        got: u32,
        /// Computed.
        want: u32,
    },
    /// The data digest does not match (the header is good: the PDU can be
    /// rejected).
    #[error("data digest mismatch")]
    DataDigest(Box<Pdu>),
    /// The data segment is longer than this side accepts.
    #[error("data segment of {len} bytes exceeds the limit of {max}")]
    DataTooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Which digests a connection uses (RFC 7143 13.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// CRC32C over the BHS and AHS.
    pub header: bool,
    /// CRC32C over the padded data segment.
    pub data: bool,
}

/// One PDU: the basic header segment, the AHS bytes and the data segment
/// (without padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pdu {
    /// The basic header segment; the AHS and data lengths in it are set by
    /// [`Pdu::encode`].
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments.
    pub ahs: Vec<u8>,
    /// The data segment.
    pub data: Vec<u8>,
}

impl Pdu {
    /// A PDU with `opcode` and everything else zero.
    pub fn new(opcode: u8) -> Pdu {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode;
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    /// The opcode (without the immediate bit).
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    /// The immediate-delivery bit.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    /// Byte 1 (the final bit and opcode-specific flags).
    pub fn flags(&self) -> u8 {
        self.bhs[1]
    }

    /// The final bit.
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    /// A big-endian u32 at `off` of the BHS.
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[off],
            self.bhs[off + 1],
            self.bhs[off + 2],
            self.bhs[off + 3],
        ])
    }

    /// Sets a big-endian u32 at `off` of the BHS.
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// The LUN field (bytes 8..16).
    pub fn lun(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.bhs[8..16]);
        l
    }

    /// Sets the LUN field.
    pub fn set_lun(&mut self, l: [u8; 8]) {
        self.bhs[8..16].copy_from_slice(&l);
    }

    /// The initiator task tag.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// Sets the initiator task tag.
    pub fn set_itt(&mut self, v: u32) {
        self.set_u32(16, v)
    }

    /// The wire form: BHS, AHS, header digest, padded data, data digest.
    pub fn encode(&self, digests: Digests) -> Vec<u8> {
        let mut bhs = self.bhs;
        let ahs_words = self.ahs.len().div_ceil(4);
        bhs[4] = ahs_words.min(255) as u8;
        let dlen = self.data.len() as u32;
        bhs[5..8].copy_from_slice(&dlen.to_be_bytes()[1..]);
        let mut out = Vec::with_capacity(BHS_LEN + self.data.len() + 16);
        out.extend_from_slice(&bhs);
        out.extend_from_slice(&self.ahs);
        out.resize(BHS_LEN + ahs_words * 4, 0);
        if digests.header {
            let c = crc32c::crc32c(&out);
            out.extend_from_slice(&c.to_le_bytes());
        }
        if !self.data.is_empty() {
            let start = out.len();
            out.extend_from_slice(&self.data);
            out.resize(start + self.data.len().div_ceil(4) * 4, 0);
            if digests.data {
                let c = crc32c::crc32c(&out[start..]);
                out.extend_from_slice(&c.to_le_bytes());
            }
        }
        out
    }

    /// Reads one PDU, refusing data segments over `max_data`.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        digests: Digests,
        max_data: usize,
    ) -> Result<Pdu, PduError> {
        let mut bhs = [0u8; BHS_LEN];
        r.read_exact(&mut bhs).await?;
        let ahs_len = bhs[4] as usize * 4;
        let dlen = u32::from_be_bytes([0, bhs[5], bhs[6], bhs[7]]) as usize;
        if dlen > max_data {
            return Err(PduError::DataTooLong {
                len: dlen,
                max: max_data,
            });
        }
        let mut ahs = vec![0u8; ahs_len];
        r.read_exact(&mut ahs).await?;
        if digests.header {
            let mut d = [0u8; 4];
            r.read_exact(&mut d).await?;
            let got = u32::from_le_bytes(d);
            let mut c = crc32c::crc32c(&bhs);
            c = crc32c::crc32c_append(c, &ahs);
            if got != c {
                return Err(PduError::HeaderDigest { got, want: c });
            }
        }
        let padded = dlen.div_ceil(4) * 4;
        let mut data = vec![0u8; padded];
        r.read_exact(&mut data).await?;
        let mut bad_data = false;
        if digests.data && dlen > 0 {
            let mut d = [0u8; 4];
            r.read_exact(&mut d).await?;
            bad_data = u32::from_le_bytes(d) != crc32c::crc32c(&data);
        }
        data.truncate(dlen);
        let pdu = Pdu { bhs, ahs, data };
        if bad_data {
            return Err(PduError::DataDigest(Box::new(pdu)));
        }
        Ok(pdu)
    }

    /// Writes the PDU.
    pub async fn write<W: AsyncWrite + Unpin>(
        &self,
        w: &mut W,
        digests: Digests,
    ) -> Result<(), PduError> {
        w.write_all(&self.encode(digests)).await?;
        Ok(())
    }
}

/// Parses a text data segment (RFC 7143 6.1): `key=value` pairs, each
/// ended by a NUL. Pairs without `=` or with non-UTF-8 bytes are returned
/// as errors naming them.
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for part in data.split(|&b| b == 0) {
        if part.is_empty() {
            continue;
        }
        let s = std::str::from_utf8(part).map_err(|_| TextError::NotUtf8)?;
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TextError::NoValue(s.chars().take(64).collect()))?;
        if k.is_empty() || k.len() > 63 {
            return Err(TextError::BadKey(k.chars().take(64).collect()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes `key=value` pairs as a text data segment.
pub fn encode_text(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// A malformed text data segment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TextError {
    /// Not UTF-8.
    #[error("text key is not UTF-8")]
    NotUtf8,
    /// A pair without `=`.
    #[error("text key {0:?} has no value")]
    NoValue(String),
    /// An empty or over-long key.
    #[error("text key {0:?} is empty or longer than 63 bytes")]
    BadKey(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_with_digests() {
        let mut p = Pdu::new(opcode::SCSI_RSP);
        p.set_itt(7);
        p.ahs = vec![1, 2, 3];
        p.data = b"hello".to_vec();
        for d in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let wire = p.encode(d);
            assert_eq!(wire.len() % 4, 0);
            let q = Pdu::read(&mut &wire[..], d, 1024).await.unwrap();
            assert_eq!(q.itt(), 7);
            assert_eq!(q.data, b"hello");
            assert_eq!(&q.ahs[..3], &[1, 2, 3]);
        }
    }

    #[tokio::test]
    async fn bad_digest_and_length() {
        let mut p = Pdu::new(opcode::NOP_IN);
        p.data = vec![9; 10];
        let d = Digests {
            header: true,
            data: true,
        };
        let mut wire = p.encode(d);
        let n = wire.len();
        wire[n - 1] ^= 1;
        assert!(matches!(
            Pdu::read(&mut &wire[..], d, 1024).await,
            Err(PduError::DataDigest(_))
        ));
        wire[0] ^= 1;
        assert!(matches!(
            Pdu::read(&mut &wire[..], d, 1024).await,
            Err(PduError::HeaderDigest { .. })
        ));
        let wire = p.encode(Digests::default());
        assert!(matches!(
            Pdu::read(&mut &wire[..], Digests::default(), 4).await,
            Err(PduError::DataTooLong { len: 10, max: 4 })
        ));
    }

    #[test]
    fn text() {
        let t = parse_text(b"A=1\0B=x=y\0\0").unwrap();
        assert_eq!(
            t,
            vec![("A".into(), "1".into()), ("B".into(), "x=y".into())]
        );
        assert!(parse_text(b"novalue\0").is_err());
        assert!(parse_text(&[0xff, b'=', 0]).is_err());
        assert_eq!(encode_text(&t), b"A=1\0B=x=y\0");
    }
}
