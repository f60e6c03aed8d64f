//! What the integration tests share: initiators, CDB builders, checks.
#![allow(dead_code)]

use std::sync::Arc;

use tern_block::BlockBackend;
use tern_scsi::sense::Asc;
use tern_scsi::{DiskConfig, NexusId, Response, ScsiTarget, Status};

pub fn nexus(vm: &str) -> NexusId {
    NexusId::Virtio {
        vm: vm.into(),
        controller: 0,
    }
}

/// Sends a command; `data_in` bytes of buffer.
pub fn run(
    t: &ScsiTarget,
    n: &NexusId,
    lun: u16,
    cdb: &[u8],
    out: &[u8],
    data_in: usize,
) -> Response {
    t.execute(n, lun, cdb, out, data_in)
}

/// Sends a command and expects GOOD.
pub fn good(
    t: &ScsiTarget,
    n: &NexusId,
    lun: u16,
    cdb: &[u8],
    out: &[u8],
    data_in: usize,
) -> Vec<u8> {
    let r = t.execute(n, lun, cdb, out, data_in);
    assert_eq!(
        r.status,
        Status::Good,
        "cdb {cdb:02x?}: sense {:?}",
        r.sense_code()
    );
    r.data_in
}

/// Expects CHECK CONDITION with this key and ASC/ASCQ.
pub fn check(r: &Response, key: u8, asc: Asc) {
    assert_eq!(r.status, Status::CheckCondition, "expected CHECK CONDITION");
    assert_eq!(r.sense_code(), Some((key, asc)), "sense {:02x?}", r.sense);
}

/// Clears the power-on unit attention of `n` on `lun`.
pub fn clear_ua(t: &ScsiTarget, n: &NexusId, lun: u16) {
    loop {
        let r = t.execute(n, lun, &tur(), &[], 0);
        if r.status != Status::CheckCondition || r.sense_code().map(|s| s.0) != Some(6) {
            return;
        }
    }
}

pub fn tur() -> Vec<u8> {
    vec![0x00, 0, 0, 0, 0, 0]
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn write10(lba: u32, blocks: u16, fua: bool) -> Vec<u8> {
    let mut c = read10(lba, blocks);
    c[0] = 0x2A;
    if fua {
        c[1] = 0x08;
    }
    c
}

pub fn rw16(opcode: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = opcode;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn rw12(opcode: u8, lba: u32, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = opcode;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&blocks.to_be_bytes());
    c
}

pub fn inquiry(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let mut c = vec![0x12, evpd as u8, page, 0, 0, 0];
    c[3..5].copy_from_slice(&alloc.to_be_bytes());
    c
}

pub fn report_luns() -> Vec<u8> {
    vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
}

pub fn request_sense(desc: bool) -> Vec<u8> {
    vec![0x03, desc as u8, 0, 0, 252, 0]
}

/// PERSISTENT RESERVE OUT with its parameter list.
pub fn prout(sa: u8, rtype: u8, key: u64, sa_key: u64) -> (Vec<u8>, Vec<u8>) {
    let cdb = vec![0x5F, sa, rtype, 0, 0, 0, 0, 0, 24, 0];
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&key.to_be_bytes());
    p[8..16].copy_from_slice(&sa_key.to_be_bytes());
    (cdb, p)
}

pub fn prin(sa: u8) -> Vec<u8> {
    vec![0x5E, sa, 0, 0, 0, 0, 0, 0x10, 0, 0]
}

pub fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub fn be64(b: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[..8]);
    u64::from_be_bytes(v)
}

/// A target with one in-memory disk at LUN 0, initiators' UAs cleared.
pub fn disk_target(
    size: usize,
    read_only: bool,
    who: &[&NexusId],
) -> (ScsiTarget, Arc<dyn BlockBackend>) {
    let t = ScsiTarget::new();
    let d = tern_scsi::fuzzing::mem_disk(size, read_only);
    t.add_disk(0, DiskConfig::new(d.clone())).unwrap();
    for n in who {
        clear_ua(&t, n, 0);
    }
    (t, d)
}
