//! Entry points fuzzers drive (`fuzz/`, and the stable fallback in this
//! module's tests): what a destination reads from the network, as it reads
//! it. Any outcome but a panic, or a write outside the guest memory given,
//! is fine.

use std::io::{Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;

use crate::hostmem::HostMem;
use crate::pages::{ChannelCodecs, ChunkApplier, ChunkBuilder};
use crate::wire::{self, Codec, Kind, PAGE, WINDOW_BYTES};

/// Window of the fuzzed zstd stream (small: fuzzing needs no 128 MiB).
const FUZZ_WINDOW_LOG: u32 = 20;

/// Guest memory the fuzzed applier writes into: two windows from 1 MiB on,
/// so chunks below, between and above it are all possible.
const MEM_BASE: u64 = WINDOW_BYTES;
const MEM_WINDOWS: u64 = 2;

/// The input as a file to read from (an unnamed temporary file: the
/// applier reads with `read`/`readv` on a descriptor, as from a socket).
fn as_fd_source(data: &[u8]) -> Option<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .ok()?;
    f.write_all(data).ok()?;
    f.rewind().ok()?;
    Some(f)
}

/// A data channel: frames (chunks, `ChannelDone`, `Sync`) applied to guest
/// memory until the first error or the end of the input. Returns the
/// pages applied.
pub fn data_channel(data: &[u8]) -> u64 {
    let Some(f) = as_fd_source(data) else {
        return 0;
    };
    let mut buf = vec![0u8; (MEM_WINDOWS * WINDOW_BYTES) as usize];
    let mem = HostMem::from_slice(MEM_BASE, &mut buf);
    // Every codec agreed: the stream (3) and delta (4) decoders too.
    let Ok(mut applier) = ChunkApplier::with_codecs(FUZZ_WINDOW_LOG, true) else {
        return 0;
    };
    let mut pages = 0;
    while let Ok(frame) = applier.next(&mem, f.as_fd()) {
        if let crate::pages::DataFrame::Chunk(n) = frame {
            pages += n;
        }
    }
    pages
}

/// A control channel as the destination reads it: the preamble, then
/// frames, each decoded as the message its kind carries (the switchover's
/// VM state too), until the first error or the end of the input. Returns
/// the messages decoded.
pub fn control_channel(mut data: &[u8]) -> usize {
    if wire::read_preamble(&mut data).is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let mut n = 0;
    while let Ok(kind) = wire::read_frame(&mut data, &mut buf) {
        let ok = match kind {
            Kind::Hello => prost::Message::decode(buf.as_slice())
                .map(|h: wire::Hello| {
                    if let Some(c) = h.config {
                        let _ = c.mismatch(&c.clone());
                    }
                })
                .is_ok(),
            Kind::Welcome => decodes::<wire::Welcome>(&buf),
            Kind::DataHello => decodes::<wire::DataHello>(&buf),
            Kind::Outcome => decodes::<wire::Outcome>(&buf),
            Kind::Abort => decodes::<wire::Abort>(&buf),
            Kind::Switchover => prost::Message::decode(buf.as_slice())
                .map(|sw: wire::Switchover| decodes::<tern_vmm::VmState>(&sw.vm_state))
                .is_ok(),
            Kind::Chunk => wire::ChunkHeader::decode(&buf).is_ok(),
            Kind::DiskChunk => crate::disk_wire::DiskChunkHeader::decode(&buf).is_ok(),
            Kind::ChannelDone | Kind::Commit | Kind::Running | Kind::Sync => true,
        };
        n += usize::from(ok);
    }
    n
}

fn decodes<M: prost::Message + Default>(b: &[u8]) -> bool {
    M::decode(b).is_ok()
}

/// Both channels: the first byte picks which one reads the rest.
pub fn frames(data: &[u8]) {
    match data.split_first() {
        Some((b, rest)) if b & 1 == 0 => {
            data_channel(rest);
        }
        Some((_, rest)) => {
            control_channel(rest);
        }
        None => {}
    }
}

/// Valid inputs for [`frames`]: data channels with raw, lz4, zstd and
/// zstd-stream chunks (scattered pages and zero pages), `Sync` and
/// `ChannelDone`; one whose second chunk is delta records against the
/// first; a control channel with every message.
pub fn frames_seeds() -> Vec<Vec<u8>> {
    let mut src = vec![0u8; WINDOW_BYTES as usize];
    for (i, b) in src.iter_mut().enumerate() {
        if !(i / PAGE).is_multiple_of(3) {
            *b = (i % 251) as u8;
        }
    }
    let mem = HostMem::from_slice(MEM_BASE, &mut src);
    let mut seeds = Vec::new();
    let mut frame = Vec::new();
    for codec in [Codec::None, Codec::Lz4, Codec::Zstd, Codec::StreamZstd] {
        let Ok(state) = ChannelCodecs::new(FUZZ_WINDOW_LOG, 0) else {
            continue;
        };
        let mut b = ChunkBuilder::resume(state);
        let mut seed = vec![0u8];
        for bits in [[0b1011, 0, 0, 1 << 63], [u64::MAX; 4]] {
            if b.build(&mem, MEM_BASE, bits, false, codec).is_some() {
                b.encode(&mut frame);
                seed.extend_from_slice(&frame);
            }
        }
        for kind in [Kind::Sync, Kind::ChannelDone] {
            let _ = wire::write_frame(&mut seed, kind, &[]);
        }
        seeds.push(seed);
    }
    // Deltas: the window sent once, then again with a few bytes changed.
    let mut changed = src.clone();
    for p in changed.chunks_mut(PAGE) {
        p[17] ^= 0x5a;
    }
    if let Ok(state) = ChannelCodecs::new(FUZZ_WINDOW_LOG, 1 << 20) {
        let mut seed = vec![0u8];
        let state = {
            let mem = HostMem::from_slice(MEM_BASE, &mut src);
            let mut b = ChunkBuilder::resume(state);
            if b.build(&mem, MEM_BASE, [u64::MAX; 4], false, Codec::None)
                .is_some()
            {
                b.encode(&mut frame);
                seed.extend_from_slice(&frame);
            }
            b.suspend()
        };
        let cmem = HostMem::from_slice(MEM_BASE, &mut changed);
        let mut b = ChunkBuilder::resume(state);
        if b.build(&cmem, MEM_BASE, [u64::MAX; 4], false, Codec::None)
            .is_some()
        {
            b.encode(&mut frame);
            seed.extend_from_slice(&frame);
        }
        let _ = wire::write_frame(&mut seed, Kind::ChannelDone, &[]);
        seeds.push(seed);
    }
    let mut ctl = vec![1u8];
    let _ = wire::write_preamble(&mut ctl, wire::PROTOCOL_VERSION);
    let config = wire::ConfigCheck {
        vcpus: 2,
        memory: 128 << 20,
        regions: vec![0, 128 << 20],
        guest_kind: "probe".into(),
        disks: 1,
    };
    let hello = wire::Hello {
        session: 7,
        channels: 2,
        config: Some(config),
        zero_copy: false,
        product: "fuzz".into(),
        codecs: Some(crate::stream_codec::offer()),
        ..Default::default()
    };
    let _ = wire::write_msg(&mut ctl, Kind::Hello, &hello);
    let _ = wire::write_msg(&mut ctl, Kind::DataHello, &wire::DataHello::default());
    let sw = wire::Switchover {
        vm_state: prost::Message::encode_to_vec(&tern_vmm::VmState::default()),
        paused: false,
        rounds: 3,
    };
    let _ = wire::write_msg(&mut ctl, Kind::Switchover, &sw);
    let _ = wire::write_msg(
        &mut ctl,
        Kind::Abort,
        &wire::Abort {
            reason: "fuzz".into(),
        },
    );
    let _ = wire::write_frame(&mut ctl, Kind::Commit, &[]);
    seeds.push(ctl);
    seeds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_decode_whole() {
        let seeds = frames_seeds();
        for s in &seeds[..4] {
            assert_eq!(data_channel(&s[1..]), 4 + 256, "{} bytes", s.len());
        }
        // The delta seed: the second chunk is codec 4.
        let d = &seeds[4][1..];
        let first = u32::from_le_bytes(d[..4].try_into().unwrap()) as usize + 4;
        assert_eq!(d[first + 5 + 72], Codec::Delta as u8);
        assert_eq!(data_channel(d), 2 * 256);
        assert_eq!(control_channel(&seeds[5][1..]), 5);
    }

    /// The stable fallback: prefixes and single-byte changes of every seed.
    #[test]
    fn seeds_and_their_mutations_never_panic() {
        for seed in frames_seeds() {
            for cut in (0..seed.len()).step_by(997) {
                frames(&seed[..cut]);
            }
            let mut m = seed.clone();
            for at in (0..m.len().min(4096)).step_by(13) {
                for x in [0xff, 0x80, 0x01] {
                    m[at] ^= x;
                    frames(&m);
                    m[at] ^= x;
                }
            }
        }
    }
}
