//! The vsock packet header (`struct virtio_vsock_hdr`, virtio 1.2 §5.10.6)
//! and the checks every header from the guest passes before the device
//! acts on it.
//!
//! A header is 44 little-endian bytes; a `VIRTIO_VSOCK_OP_RW` packet's
//! payload follows it in the same descriptor chain. Everything in it is
//! the guest's word: the lengths, the ports, the CIDs, the operation.
//! [`Header::check_from_guest`] names the first thing wrong so the device
//! can drop the packet and count it, never trust it.

/// Size of the header on the wire.
pub const HDR_LEN: usize = 44;

/// The host's CID (the other end of every guest connection).
pub const HOST_CID: u64 = 2;

/// Largest payload one packet carries, either way. Linux sends at most
/// 64 KiB per packet (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`); anything longer
/// from the guest is refused.
pub const MAX_PAYLOAD: u32 = 64 << 10;

/// `type`: a stream socket (the only type the device offers).
pub const TYPE_STREAM: u16 = 1;

/// Operations (`op`).
pub mod op {
    #![allow(missing_docs)]
    pub const INVALID: u16 = 0;
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// `flags` of a SHUTDOWN: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// `flags` of a SHUTDOWN: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// `virtio_vsock_event.id`: every connection was reset (after a restore
/// or migration); the driver re-reads the guest CID.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// One packet header, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type.
    pub kind: u16,
    /// Operation.
    pub op: u16,
    /// Operation flags (SHUTDOWN).
    pub flags: u32,
    /// The sender's receive buffer for this connection, bytes.
    pub buf_alloc: u32,
    /// Bytes the sender has taken out of that buffer so far (wrapping).
    pub fwd_cnt: u32,
}

/// Why a header from the guest was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadHeader {
    /// The chain holds fewer bytes than a header.
    #[error("packet of {0} bytes is shorter than the {HDR_LEN}-byte header")]
    Short(usize),
    /// The guest claims another CID than its own.
    #[error("source CID {got} is not the guest's ({want})")]
    SourceCid {
        /// CID in the header.
        got: u64,
        /// The guest's CID.
        want: u64,
    },
    /// Not addressed to the host.
    #[error("destination CID {0} is not the host's (2)")]
    DestCid(u64),
    /// A socket type the device does not offer.
    #[error("socket type {0} is not a stream (1)")]
    Type(u16),
    /// An operation that does not exist.
    #[error("unknown operation {0}")]
    Op(u16),
    /// A payload on an operation that carries none, or a length beyond
    /// what the chain holds or [`MAX_PAYLOAD`].
    #[error("payload length {len} for operation {op} ({have} bytes follow the header)")]
    Len {
        /// Operation.
        op: u16,
        /// Length in the header.
        len: u32,
        /// Bytes in the chain after the header.
        have: usize,
    },
    /// SHUTDOWN flags outside RCV|SEND.
    #[error("shutdown flags {0:#x}")]
    Flags(u32),
}

impl Header {
    /// Decodes the 44 header bytes.
    pub fn decode(b: &[u8; HDR_LEN]) -> Header {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().expect("2 bytes"));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            kind: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The 44 header bytes.
    pub fn encode(&self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.kind.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// Checks a header the guest (CID `guest_cid`) sent, with `payload`
    /// bytes following it in the chain. Only RW carries a payload; its
    /// length must fit both the chain and [`MAX_PAYLOAD`].
    pub fn check_from_guest(&self, guest_cid: u64, payload: usize) -> Result<(), BadHeader> {
        if self.src_cid != guest_cid {
            return Err(BadHeader::SourceCid {
                got: self.src_cid,
                want: guest_cid,
            });
        }
        if self.dst_cid != HOST_CID {
            return Err(BadHeader::DestCid(self.dst_cid));
        }
        if self.kind != TYPE_STREAM {
            return Err(BadHeader::Type(self.kind));
        }
        if !(op::REQUEST..=op::CREDIT_REQUEST).contains(&self.op) {
            return Err(BadHeader::Op(self.op));
        }
        let len_ok = if self.op == op::RW {
            self.len > 0 && self.len <= MAX_PAYLOAD && self.len as usize <= payload
        } else {
            self.len == 0
        };
        if !len_ok {
            return Err(BadHeader::Len {
                op: self.op,
                len: self.len,
                have: payload,
            });
        }
        if self.op == op::SHUTDOWN && self.flags & !(SHUTDOWN_RCV | SHUTDOWN_SEND) != 0 {
            return Err(BadHeader::Flags(self.flags));
        }
        Ok(())
    }

    /// A header from the host to the guest: `op` from host port `src_port`
    /// to guest port `dst_port`.
    pub fn to_guest(guest_cid: u64, src_port: u32, dst_port: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port,
            dst_port,
            kind: TYPE_STREAM,
            op,
            ..Header::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 5000,
            len,
            kind: TYPE_STREAM,
            op: op::RW,
            buf_alloc: 65536,
            fwd_cnt: 7,
            flags: 0,
        }
    }

    #[test]
    fn encodes_and_decodes_every_field_at_its_offset() {
        let h = rw(100);
        let b = h.encode();
        assert_eq!(&b[0..8], &3u64.to_le_bytes());
        assert_eq!(&b[24..28], &100u32.to_le_bytes());
        assert_eq!(&b[30..32], &op::RW.to_le_bytes());
        assert_eq!(&b[40..44], &7u32.to_le_bytes());
        assert_eq!(Header::decode(&b), h);
    }

    #[test]
    fn guest_headers_are_checked_field_by_field() {
        assert_eq!(rw(100).check_from_guest(3, 100), Ok(()));
        assert!(matches!(
            rw(100).check_from_guest(4, 100),
            Err(BadHeader::SourceCid { got: 3, want: 4 })
        ));
        let mut h = rw(100);
        h.dst_cid = 7;
        assert_eq!(h.check_from_guest(3, 100), Err(BadHeader::DestCid(7)));
        h = rw(100);
        h.kind = 2;
        assert_eq!(h.check_from_guest(3, 100), Err(BadHeader::Type(2)));
        h = rw(100);
        h.op = 8;
        assert_eq!(h.check_from_guest(3, 100), Err(BadHeader::Op(8)));
        h.op = op::INVALID;
        assert_eq!(h.check_from_guest(3, 100), Err(BadHeader::Op(0)));
        // Longer than the chain, longer than the limit, empty RW.
        assert!(rw(101).check_from_guest(3, 100).is_err());
        assert!(rw(MAX_PAYLOAD + 1).check_from_guest(3, usize::MAX).is_err());
        assert!(rw(0).check_from_guest(3, 0).is_err());
        // A payload on a control packet.
        h = rw(4);
        h.op = op::REQUEST;
        assert!(h.check_from_guest(3, 4).is_err());
        h.len = 0;
        assert_eq!(h.check_from_guest(3, 4), Ok(()));
        h.op = op::SHUTDOWN;
        h.flags = 4;
        assert_eq!(h.check_from_guest(3, 0), Err(BadHeader::Flags(4)));
        h.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        assert_eq!(h.check_from_guest(3, 0), Ok(()));
    }
}
