//! Finding the fields of an encoded message that this build does not know.
//!
//! prost skips unknown fields silently when it decodes. A saved state or a
//! migration stream from a newer Tern may carry fields this reader cannot
//! act on; they must be reported (and refused when the writer marked them
//! as required), never dropped without a word.
//!
//! No schema is kept by hand: the bytes are decoded with the prost type,
//! encoded again, and the two encodings are compared field by field. A
//! field this build knows survives the round trip; an unknown one does
//! not. Where a length-delimited field survives but its bytes changed, it
//! is a nested message that lost something, and the comparison recurses
//! into it. This relies on the writer's encoding being canonical (prost's:
//! fields that hold their default value are not written), which every Tern
//! writer's is.

use std::fmt;

/// A field of an encoded message that this build's types do not have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownField {
    /// Field numbers from the outermost message inward, e.g. `[1, 12]` is
    /// field 12 inside field 1.
    pub path: Vec<u32>,
    /// The protobuf wire type it was written with.
    pub wire_type: u8,
}

impl UnknownField {
    /// The path as dotted field numbers (`1.12`), the form writers use to
    /// mark fields as required.
    pub fn dotted(&self) -> String {
        self.path
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }
}

impl fmt::Display for UnknownField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field {} (wire type {})", self.dotted(), self.wire_type)
    }
}

/// The encoding is not valid protobuf.
#[derive(Debug, thiserror::Error)]
pub enum CompatError {
    /// prost refused the bytes.
    #[error("cannot decode the saved state")]
    Decode(#[source] prost::DecodeError),
    /// The wire format is broken at some offset.
    #[error("malformed protobuf at byte {0}")]
    Malformed(usize),
}

/// One field occurrence: number, wire type, and its value bytes (for
/// length-delimited fields, without the length prefix).
struct Field<'a> {
    tag: u32,
    wire_type: u8,
    value: &'a [u8],
}

fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Splits an encoded message into its fields.
fn fields(b: &[u8]) -> Result<Vec<Field<'_>>, CompatError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let key = varint(b, &mut at).ok_or(CompatError::Malformed(start))?;
        let tag = u32::try_from(key >> 3).map_err(|_| CompatError::Malformed(start))?;
        let wire_type = (key & 7) as u8;
        let value_start = at;
        match wire_type {
            0 => {
                varint(b, &mut at).ok_or(CompatError::Malformed(start))?;
            }
            1 => at += 8,
            5 => at += 4,
            2 => {
                let len = varint(b, &mut at).ok_or(CompatError::Malformed(start))?;
                let len = usize::try_from(len).map_err(|_| CompatError::Malformed(start))?;
                let vs = at;
                at = at.checked_add(len).ok_or(CompatError::Malformed(start))?;
                if at > b.len() || tag == 0 {
                    return Err(CompatError::Malformed(start));
                }
                out.push(Field {
                    tag,
                    wire_type,
                    value: &b[vs..at],
                });
                continue;
            }
            // Groups (3, 4) are not used by proto3 or by Tern.
            _ => return Err(CompatError::Malformed(start)),
        }
        if at > b.len() || tag == 0 {
            return Err(CompatError::Malformed(start));
        }
        out.push(Field {
            tag,
            wire_type,
            value: &b[value_start..at],
        });
    }
    Ok(out)
}

fn diff(
    orig: &[u8],
    canon: &[u8],
    path: &mut Vec<u32>,
    out: &mut Vec<UnknownField>,
) -> Result<(), CompatError> {
    let a = fields(orig)?;
    // Our own encoding always parses; be safe anyway.
    let b = fields(canon).unwrap_or_default();
    let mut seen: Vec<u32> = Vec::new();
    for f in &a {
        if seen.contains(&f.tag) {
            continue;
        }
        seen.push(f.tag);
        let ours: Vec<&Field> = b.iter().filter(|g| g.tag == f.tag).collect();
        if ours.is_empty() {
            path.push(f.tag);
            out.push(UnknownField {
                path: path.clone(),
                wire_type: f.wire_type,
            });
            path.pop();
            continue;
        }
        if f.wire_type != 2 {
            continue;
        }
        // Pair the occurrences of a repeated field in order; a nested
        // message that lost fields differs from its re-encoding.
        // A singular message written in several pieces was merged into
        // one: compare each piece with the merged whole.
        let theirs = a.iter().filter(|g| g.tag == f.tag);
        for (i, t) in theirs.enumerate() {
            let o = ours[i.min(ours.len() - 1)];
            if t.value != o.value {
                path.push(f.tag);
                let r = diff(t.value, o.value, path, out);
                path.pop();
                if r.is_err() {
                    // Not a message after all (a non-canonical scalar
                    // encoding): report it rather than guess.
                    let mut p = path.clone();
                    p.push(f.tag);
                    out.push(UnknownField {
                        path: p,
                        wire_type: f.wire_type,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Decodes `bytes` as `M` and lists the fields it had that `M` does not
/// know, outermost first.
pub fn decode_checked<M: prost::Message + Default>(
    bytes: &[u8],
) -> Result<(M, Vec<UnknownField>), CompatError> {
    let msg = M::decode(bytes).map_err(CompatError::Decode)?;
    let canon = msg.encode_to_vec();
    let mut out = Vec::new();
    if canon != bytes {
        diff(bytes, &canon, &mut Vec::new(), &mut out)?;
    }
    Ok((msg, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::proto::{DeviceState, Regs, VcpuState, VmState};
    use prost::Message;

    fn sample() -> VmState {
        VmState {
            vcpus: vec![
                VcpuState {
                    id: 0,
                    regs: Some(Regs {
                        rip: 0x20_0000,
                        rsp: 7,
                        ..Default::default()
                    }),
                    sregs: vec![1, 2, 3],
                    ..Default::default()
                },
                VcpuState {
                    id: 1,
                    parked: true,
                    ..Default::default()
                },
            ],
            irqchips: vec![vec![9; 16], vec![]],
            clock: 77,
            devices: vec![DeviceState {
                kind: "virtio-blk".into(),
                index: 0,
                data: vec![0xff; 5],
            }],
            probe: true,
            ..Default::default()
        }
    }

    fn key(tag: u32, wt: u8) -> Vec<u8> {
        let mut v = Vec::new();
        prost::encoding::encode_varint(u64::from(tag) << 3 | u64::from(wt), &mut v);
        v
    }

    #[test]
    fn our_own_encoding_has_no_unknown_fields() {
        let bytes = sample().encode_to_vec();
        let (s, unknown) = decode_checked::<VmState>(&bytes).unwrap();
        assert_eq!(s, sample());
        assert!(unknown.is_empty(), "{unknown:?}");
    }

    #[test]
    fn top_level_and_nested_unknown_fields_are_found() {
        // A newer writer: VmState field 40 (varint), and in the second
        // vCPU a field 33 (length-delimited) and in vCPU 0's registers a
        // field 50 (fixed64).
        let s = sample();
        let mut vcpu0 = VcpuState {
            regs: None,
            ..s.vcpus[0].clone()
        }
        .encode_to_vec();
        let mut regs = s.vcpus[0].regs.clone().unwrap().encode_to_vec();
        regs.extend(key(50, 1));
        regs.extend(1234u64.to_le_bytes());
        vcpu0.extend(key(2, 2));
        prost::encoding::encode_varint(regs.len() as u64, &mut vcpu0);
        vcpu0.extend(&regs);
        let mut vcpu1 = s.vcpus[1].clone().encode_to_vec();
        vcpu1.extend(key(33, 2));
        vcpu1.extend([3, b'a', b'b', b'c']);
        let mut top = VmState {
            vcpus: vec![],
            ..s.clone()
        }
        .encode_to_vec();
        for v in [&vcpu0, &vcpu1] {
            top.extend(key(1, 2));
            prost::encoding::encode_varint(v.len() as u64, &mut top);
            top.extend(v.iter());
        }
        top.extend(key(40, 0));
        top.push(5);
        let (back, unknown) = decode_checked::<VmState>(&top).unwrap();
        assert_eq!(back.vcpus.len(), 2);
        let mut paths: Vec<String> = unknown.iter().map(UnknownField::dotted).collect();
        paths.sort();
        assert_eq!(paths, vec!["1.2.50", "1.33", "40"], "{unknown:?}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [&[0x0a, 0x05, 1][..], &[0xff; 11], &[0x0b]] {
            assert!(decode_checked::<VmState>(bad).is_err(), "{bad:?}");
        }
    }
}
