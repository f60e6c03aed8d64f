//! The wire format: connection preamble, frames, control messages (prost)
//! and page chunks (a fixed binary header). See the crate docs for the
//! protocol itself.

use std::io::{self, Read, Write};

/// The protocol versions (see [`crate::version`]: the N-1 rule and how
/// two ends agree).
pub use crate::version::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
/// First bytes of every connection.
pub const MAGIC: [u8; 8] = *b"TERNMIG\0";
/// Guest page size.
pub const PAGE: usize = 4096;
/// Pages per chunk window (1 MiB of guest memory).
pub const WINDOW_PAGES: usize = 256;
/// Bytes of guest memory one window covers.
pub const WINDOW_BYTES: u64 = (WINDOW_PAGES * PAGE) as u64;
/// Largest frame payload accepted (a window of raw pages plus header).
pub const MAX_FRAME: u32 = 2 << 20;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Control: [`Hello`] (source → destination).
    Hello = 1,
    /// Control: [`Welcome`] (destination → source).
    Welcome = 2,
    /// Data channel: [`DataHello`] (source → destination).
    DataHello = 3,
    /// Data channel: a [`ChunkHeader`] and page data.
    Chunk = 4,
    /// Data channel: no more chunks on this channel.
    ChannelDone = 5,
    /// Control: [`Switchover`] (vCPU and device state).
    Switchover = 6,
    /// Control: [`Outcome`] (destination → source).
    Outcome = 7,
    /// Control: [`Abort`] (source → destination).
    Abort = 8,
    /// Control: empty; the source will never resume: run the VM
    /// (source → destination, after a ready [`Outcome`]).
    Commit = 9,
    /// Control: empty; the VM runs at the destination (destination →
    /// source, after [`Kind::Commit`]).
    Running = 10,
    /// Data channel: empty; the source asks, and the destination echoes
    /// it once everything before it on the channel is applied.
    Sync = 11,
    /// Data channel: a [`crate::disk_wire::DiskChunkHeader`] and disk
    /// data (shared-nothing migration; kinds 13..=15 are kept for it).
    DiskChunk = 12,
}

impl Kind {
    /// The kind of a wire byte.
    pub(crate) fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::DataHello,
            4 => Kind::Chunk,
            5 => Kind::ChannelDone,
            6 => Kind::Switchover,
            7 => Kind::Outcome,
            8 => Kind::Abort,
            9 => Kind::Commit,
            10 => Kind::Running,
            11 => Kind::Sync,
            12 => Kind::DiskChunk,
            _ => return None,
        })
    }
}

/// Errors reading or writing the wire format.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed.
    #[error("connection failed")]
    Io(#[from] io::Error),
    /// The peer is not a Tern migration endpoint.
    #[error("peer is not a Tern migration endpoint (bad magic)")]
    BadMagic,
    /// The peer speaks a protocol version this build does not.
    #[error("peer speaks migration protocol {peer}, this build {min}..={max}")]
    Version {
        /// The peer's version.
        peer: u32,
        /// Oldest accepted.
        min: u32,
        /// Newest spoken.
        max: u32,
    },
    /// A frame has an unknown kind or size.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// A control message does not decode.
    #[error("bad {what} message")]
    Decode {
        /// Which message.
        what: &'static str,
        /// Why.
        #[source]
        source: prost::DecodeError,
    },
    /// A different frame arrived than the protocol allows here.
    #[error("expected {expected}, got {got:?}")]
    Unexpected {
        /// What the state machine waited for.
        expected: &'static str,
        /// What came.
        got: Kind,
    },
}

/// Writes the connection preamble: magic and protocol version.
pub fn write_preamble(w: &mut impl Write, version: u32) -> io::Result<()> {
    let mut b = [0u8; 12];
    b[..8].copy_from_slice(&MAGIC);
    b[8..].copy_from_slice(&version.to_le_bytes());
    w.write_all(&b)
}

/// Reads the preamble; returns the peer's version (not yet checked).
pub fn read_preamble(r: &mut impl Read) -> Result<u32, WireError> {
    let mut b = [0u8; 12];
    r.read_exact(&mut b)?;
    if b[..8] != MAGIC {
        return Err(WireError::BadMagic);
    }
    Ok(u32::from_le_bytes(b[8..].try_into().expect("4 bytes")))
}

/// Writes one frame: u32 length (LE, of kind + payload), u8 kind, payload.
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&(payload.len() as u32 + 1).to_le_bytes());
    head[4] = kind as u8;
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Writes a control message frame.
pub fn write_msg(w: &mut impl Write, kind: Kind, msg: &impl prost::Message) -> io::Result<()> {
    write_frame(w, kind, &msg.encode_to_vec())
}

/// Reads one frame into `buf` (resized); returns its kind.
pub fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> Result<Kind, WireError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head)?;
    let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_FRAME {
        return Err(WireError::BadFrame(format!("length {len}")));
    }
    let kind =
        Kind::from_u8(head[4]).ok_or_else(|| WireError::BadFrame(format!("kind {}", head[4])))?;
    buf.resize(len as usize - 1, 0);
    r.read_exact(buf)?;
    Ok(kind)
}

/// Reads a frame that must be `want` and decodes it as `M`.
pub fn read_msg<M: prost::Message + Default>(
    r: &mut impl Read,
    want: Kind,
    what: &'static str,
) -> Result<M, WireError> {
    let mut buf = Vec::new();
    let got = read_frame(r, &mut buf)?;
    if got != want {
        return Err(WireError::Unexpected {
            expected: what,
            got,
        });
    }
    M::decode(buf.as_slice()).map_err(|source| WireError::Decode { what, source })
}

/// The VM configuration both ends must agree on.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigCheck {
    /// vCPU count.
    #[prost(uint32, tag = "1")]
    pub vcpus: u32,
    /// Guest RAM in bytes.
    #[prost(uint64, tag = "2")]
    pub memory: u64,
    /// RAM ranges: start, len, start, len, ...
    #[prost(uint64, repeated, tag = "3")]
    pub regions: Vec<u64>,
    /// "probe" or "linux".
    #[prost(string, tag = "4")]
    pub guest_kind: String,
    /// Number of disks.
    #[prost(uint32, tag = "5")]
    pub disks: u32,
}

impl ConfigCheck {
    /// Describes the first difference between `self` (source) and `dest`.
    pub fn mismatch(&self, dest: &ConfigCheck) -> Option<String> {
        if self.vcpus != dest.vcpus {
            return Some(format!(
                "source has {} vCPUs, destination {}",
                self.vcpus, dest.vcpus
            ));
        }
        if self.memory != dest.memory || self.regions != dest.regions {
            return Some(format!(
                "source has {} bytes of memory {:x?}, destination {} {:x?}",
                self.memory, self.regions, dest.memory, dest.regions
            ));
        }
        if self.guest_kind != dest.guest_kind {
            return Some(format!(
                "source runs a {} guest, destination expects {}",
                self.guest_kind, dest.guest_kind
            ));
        }
        if self.disks != dest.disks {
            return Some(format!(
                "source has {} disks, destination {}",
                self.disks, dest.disks
            ));
        }
        None
    }
}

/// Control: the source's opening message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Session id, repeated by every data channel.
    #[prost(uint64, tag = "1")]
    pub session: u64,
    /// Number of data channels that will connect.
    #[prost(uint32, tag = "2")]
    pub channels: u32,
    /// The source VM's configuration.
    #[prost(message, optional, tag = "3")]
    pub config: Option<ConfigCheck>,
    /// Memory is handed over as a memfd (UNIX socket), not streamed.
    #[prost(bool, tag = "4")]
    pub zero_copy: bool,
    /// The source's product version, for messages.
    #[prost(string, tag = "5")]
    pub product: String,
    /// Disks to mirror (shared-nothing); empty: the disks are on shared
    /// storage (and a protocol 3 source never sets it).
    #[prost(message, repeated, tag = "7")]
    pub disks: Vec<crate::disk_wire::DiskOffer>,
    /// Codecs the source offers beyond 0-2 (a version 3 source: none).
    #[prost(message, optional, tag = "6")]
    pub codecs: Option<Codecs>,
}

/// Chunk codecs beyond none, LZ4 and zstd: offered in [`Hello`] (with the
/// source's limits), accepted in [`Welcome`] (what the channels use).
/// Absent or zero: off, so a peer that does not know them never sees
/// them.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Codecs {
    /// Codec 3, the per-channel zstd stream: its window, log2 bytes
    /// (offered: the largest the source would use; accepted: the one it
    /// uses, each channel's destination decoder holding that much).
    #[prost(uint32, tag = "1")]
    pub stream_window_log: u32,
    /// Codec 4, delta records of re-dirtied pages.
    #[prost(bool, tag = "2")]
    pub delta: bool,
}

/// Control: the destination's answer to [`Hello`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Welcome {
    /// Whether the migration may proceed.
    #[prost(bool, tag = "1")]
    pub accepted: bool,
    /// Why not.
    #[prost(string, tag = "2")]
    pub error: String,
    /// The answer to [`Hello::disks`]; absent from a destination that
    /// does not mirror disks (protocol 3).
    #[prost(message, optional, tag = "4")]
    pub disks: Option<crate::disk_wire::DiskAcceptance>,
    /// The codecs of [`Hello::codecs`] the destination accepts.
    #[prost(message, optional, tag = "3")]
    pub codecs: Option<Codecs>,
}

/// Data channel: identifies the channel.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataHello {
    /// The session from [`Hello`].
    #[prost(uint64, tag = "1")]
    pub session: u64,
    /// Channel index, 0-based.
    #[prost(uint32, tag = "2")]
    pub index: u32,
}

/// Control: the final state, sent after every channel's `ChannelDone`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Switchover {
    /// `tern_vmm::VmState`, prost-encoded.
    #[prost(bytes = "vec", tag = "1")]
    pub vm_state: Vec<u8>,
    /// The VM was paused at the source before migration: keep it paused.
    #[prost(bool, tag = "2")]
    pub paused: bool,
    /// Precopy rounds the source ran (for the destination's log).
    #[prost(uint32, tag = "3")]
    pub rounds: u32,
}

/// Control: the destination's verdict on the switchover.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Outcome {
    /// The VM is built at the destination (memory, state, disks opened)
    /// and waits for [`Kind::Commit`]; nothing of it has run.
    #[prost(bool, tag = "1")]
    pub ready: bool,
    /// Why not.
    #[prost(string, tag = "2")]
    pub error: String,
}

/// Control: the source gives up (cancel, timeout, error).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Abort {
    /// Why.
    #[prost(string, tag = "1")]
    pub reason: String,
}

/// Page data encoding of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Raw pages.
    None = 0,
    /// LZ4 block.
    Lz4 = 1,
    /// Zstandard frame.
    Zstd = 2,
    /// The channel's zstd stream, flushed at the chunk's end
    /// ([`crate::stream_codec`]; only when the handshake agreed it).
    StreamZstd = 3,
    /// Delta records of the pages ([`crate::delta`]; only when agreed).
    Delta = 4,
}

impl Codec {
    /// From the wire byte.
    pub fn from_u8(v: u8) -> Option<Codec> {
        Some(match v {
            0 => Codec::None,
            1 => Codec::Lz4,
            2 => Codec::Zstd,
            3 => Codec::StreamZstd,
            4 => Codec::Delta,
            _ => return None,
        })
    }

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
            Codec::StreamZstd => "zstd-stream",
            Codec::Delta => "delta",
        }
    }
}

/// Size of an encoded [`ChunkHeader`].
pub const CHUNK_HEADER: usize = 8 + 32 + 32 + 1 + 4;

/// The header of a page chunk: a 1 MiB window of guest memory, which of its
/// pages are carried, which of those are zero (no data), and how the data
/// of the others (concatenated, ascending) is encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Guest-physical address of the window (1 MiB aligned).
    pub base: u64,
    /// Bit i: page i of the window is in this chunk.
    pub present: [u64; 4],
    /// Bit i: page i is all zeros (no data sent for it).
    pub zero: [u64; 4],
    /// Encoding of the data.
    pub codec: Codec,
    /// Bytes of data once decoded (4096 × data pages).
    pub raw_len: u32,
}

impl ChunkHeader {
    /// Appends the encoded header to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.base.to_le_bytes());
        for w in self.present.iter().chain(&self.zero) {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.push(self.codec as u8);
        out.extend_from_slice(&self.raw_len.to_le_bytes());
    }

    /// Decodes a header from the start of `b`; checks it is consistent.
    pub fn decode(b: &[u8]) -> Result<ChunkHeader, WireError> {
        if b.len() < CHUNK_HEADER {
            return Err(WireError::BadFrame(format!("chunk of {} bytes", b.len())));
        }
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let mut present = [0u64; 4];
        let mut zero = [0u64; 4];
        for i in 0..4 {
            present[i] = u64_at(8 + i * 8);
            zero[i] = u64_at(40 + i * 8);
        }
        let codec = Codec::from_u8(b[72]).ok_or_else(|| WireError::BadFrame("codec".into()))?;
        let raw_len = u32::from_le_bytes(b[73..77].try_into().expect("4 bytes"));
        let h = ChunkHeader {
            base: u64_at(0),
            present,
            zero,
            codec,
            raw_len,
        };
        let data_pages: u32 = (0..4).map(|i| (present[i] & !zero[i]).count_ones()).sum();
        if !h.base.is_multiple_of(WINDOW_BYTES)
            || (0..4).any(|i| zero[i] & !present[i] != 0)
            || raw_len != data_pages * PAGE as u32
        {
            return Err(WireError::BadFrame(format!(
                "inconsistent chunk header at {:#x}",
                h.base
            )));
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_and_messages_round_trip() {
        let mut out = Vec::new();
        write_preamble(&mut out, PROTOCOL_VERSION).unwrap();
        let hello = Hello {
            session: 42,
            channels: 4,
            config: Some(ConfigCheck {
                vcpus: 2,
                memory: 1 << 30,
                regions: vec![0, 1 << 30],
                guest_kind: "probe".into(),
                disks: 0,
            }),
            zero_copy: false,
            product: "0.1.0".into(),
            codecs: Some(Codecs {
                stream_window_log: 27,
                delta: true,
            }),
            ..Default::default()
        };
        write_msg(&mut out, Kind::Hello, &hello).unwrap();
        write_frame(&mut out, Kind::ChannelDone, &[]).unwrap();
        let mut r = out.as_slice();
        assert_eq!(read_preamble(&mut r).unwrap(), PROTOCOL_VERSION);
        let back: Hello = read_msg(&mut r, Kind::Hello, "hello").unwrap();
        assert_eq!(back, hello);
        let e = read_msg::<Hello>(&mut r, Kind::Hello, "hello").unwrap_err();
        assert!(e.to_string().contains("expected hello"), "{e}");
    }

    #[test]
    fn a_version_3_hello_and_welcome_carry_no_codecs() {
        // What a version 3 build writes: fields 1-5 only.
        let mut old = Vec::new();
        prost::encoding::uint64::encode(1, &42, &mut old);
        prost::encoding::uint32::encode(2, &2, &mut old);
        prost::encoding::string::encode(5, &"0.0.9".to_string(), &mut old);
        let h: Hello = prost::Message::decode(old.as_slice()).unwrap();
        assert_eq!((h.session, h.channels, h.codecs), (42, 2, None));
        let mut w = Vec::new();
        prost::encoding::bool::encode(1, &true, &mut w);
        let w: Welcome = prost::Message::decode(w.as_slice()).unwrap();
        assert!(w.accepted && w.codecs.is_none());
        assert_eq!(Codec::from_u8(3), Some(Codec::StreamZstd));
        assert_eq!(Codec::from_u8(4), Some(Codec::Delta));
        assert_eq!(Codec::from_u8(5), None);
    }

    #[test]
    fn bad_magic_and_frames_are_refused() {
        let mut r: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(read_preamble(&mut r), Err(WireError::BadMagic)));
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 4];
        assert!(read_frame(&mut r, &mut Vec::new()).is_err());
        let mut r: &[u8] = &[1, 0, 0, 0, 99];
        assert!(read_frame(&mut r, &mut Vec::new()).is_err());
    }

    #[test]
    fn chunk_headers_round_trip_and_are_checked() {
        let h = ChunkHeader {
            base: 3 * WINDOW_BYTES,
            present: [0b1011, 0, 0, 1 << 63],
            zero: [0b0010, 0, 0, 0],
            codec: Codec::Zstd,
            raw_len: 3 * PAGE as u32,
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(b.len(), CHUNK_HEADER);
        assert_eq!(ChunkHeader::decode(&b).unwrap(), h);
        let mut bad = h.clone();
        bad.raw_len += 1;
        b.clear();
        bad.encode(&mut b);
        assert!(ChunkHeader::decode(&b).is_err());
        let mut bad = h;
        bad.zero[1] = 1;
        b.clear();
        bad.encode(&mut b);
        assert!(ChunkHeader::decode(&b).is_err());
    }

    #[test]
    fn config_mismatches_are_named() {
        let a = ConfigCheck {
            vcpus: 2,
            memory: 64 << 20,
            regions: vec![0, 64 << 20],
            guest_kind: "probe".into(),
            disks: 0,
        };
        assert_eq!(a.mismatch(&a.clone()), None);
        let mut b = a.clone();
        b.vcpus = 1;
        assert!(a.mismatch(&b).unwrap().contains("2 vCPUs, destination 1"));
        let mut b = a.clone();
        b.memory = 128 << 20;
        assert!(a.mismatch(&b).unwrap().contains("memory"));
    }
}
