//! A disk (SBC-4) over a [`BlockBackend`]: 512-byte logical blocks, the
//! backend's flush for SYNCHRONIZE CACHE and FUA, its discard for UNMAP,
//! persistent reservations checked on every command.

use std::sync::Arc;

use tern_block::{BlockBackend, BlockError, SECTOR_SIZE};

use crate::cdb::{ByteCheck, Command, UnitKind};
use crate::dvd::check_power_condition;
use crate::inquiry::{
    MAX_TRANSFER_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};
use crate::mode::{self, UnitFacts};
use crate::nexus::NexusId;
use crate::pr::{AccessClass, PrError, PrOutParams};
use crate::response::{alloc, Fail};
use crate::sense::{Asc, Sense, SenseKey};
use crate::store::{self, ReservationStore, StoreError};
use crate::target::{internal_failure, Ctx, Lun};
use crate::ua::UnitAttention;

/// Bytes per disk block.
const BLOCK: u64 = SECTOR_SIZE;

/// The disk-specific part of a logical unit.
pub(crate) struct Disk {
    backend: Arc<dyn BlockBackend>,
    store: Arc<dyn ReservationStore>,
}

/// The reservation class of a command (SPC-4 table 64, SBC-4 table 14).
fn access_class(cmd: &Command) -> AccessClass {
    match cmd {
        Command::Read { .. } | Command::Verify { .. } | Command::ModeSense { .. } => {
            AccessClass::Read
        }
        Command::Write { .. }
        | Command::WriteSame { .. }
        | Command::Unmap { .. }
        | Command::SynchronizeCache { .. }
        | Command::ModeSelect { .. }
        | Command::StartStopUnit { .. } => AccessClass::Write,
        _ => AccessClass::Always,
    }
}

fn io_sense(e: &BlockError, write: bool) -> Sense {
    match e {
        BlockError::OutOfRange { .. } => Sense::lba_out_of_range(),
        BlockError::ReadOnly => Sense::write_protected(),
        _ if write => Sense::new(SenseKey::MediumError, Asc::WRITE_ERROR),
        _ => Sense::new(SenseKey::MediumError, Asc::UNRECOVERED_READ_ERROR),
    }
}

fn store_failure(_: StoreError) -> Fail {
    Fail::Check(internal_failure())
}

impl Disk {
    pub fn new(backend: Arc<dyn BlockBackend>, store: Arc<dyn ReservationStore>) -> Disk {
        Disk { backend, store }
    }

    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.backend
    }

    pub fn store(&self) -> &Arc<dyn ReservationStore> {
        &self.store
    }

    fn blocks(&self) -> u64 {
        self.backend.capacity() / BLOCK
    }

    /// Unit attentions raised for `nexus` through the reservation store.
    pub fn take_shared_attentions(
        &self,
        nexus: &NexusId,
    ) -> Result<Vec<UnitAttention>, StoreError> {
        if !store::read(&*self.store, |s| s.pending.contains_key(nexus))? {
            return Ok(Vec::new());
        }
        store::modify(&*self.store, |s| {
            let p = s.take_pending(nexus);
            (!p.is_empty(), p)
        })
    }

    /// Checks `[lba, lba+blocks)` against the capacity (SBC-4 4.5: a
    /// zero-length transfer still needs an LBA on the medium).
    fn check_range(&self, lba: u64, blocks: u32) -> Result<(), Sense> {
        let cap = self.blocks();
        match lba.checked_add(blocks as u64) {
            Some(end) if end <= cap && lba < cap.max(1) => Ok(()),
            _ => Err(Sense::lba_out_of_range()),
        }
    }

    fn check_writable(&self) -> Result<(), Sense> {
        if self.backend.read_only() {
            Err(Sense::write_protected())
        } else {
            Ok(())
        }
    }

    fn flush(&self) -> Result<(), Sense> {
        self.backend.flush().map_err(|e| io_sense(&e, true))
    }

    fn facts(&self) -> UnitFacts {
        UnitFacts {
            kind: UnitKind::Disk,
            blocks: self.blocks(),
            block_size: BLOCK as u32,
            write_protected: self.backend.read_only(),
            locked: false,
        }
    }

    pub fn run(&self, lun: &Lun, ctx: &Ctx<'_>, cmd: &Command) -> Result<Vec<u8>, Fail> {
        let class = access_class(cmd);
        if class != AccessClass::Always
            && !store::read(&*self.store, |s| s.allows(ctx.nexus, class)).map_err(store_failure)?
        {
            return Err(Fail::Conflict);
        }
        match *cmd {
            Command::TestUnitReady => Ok(Vec::new()),
            Command::ReadCapacity10 => {
                let last = self.blocks().saturating_sub(1);
                let mut d = vec![0u8; 8];
                d[0..4].copy_from_slice(&u32::try_from(last).unwrap_or(u32::MAX).to_be_bytes());
                d[4..8].copy_from_slice(&(BLOCK as u32).to_be_bytes());
                Ok(d)
            }
            Command::ReadCapacity16 { alloc: a } => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&(BLOCK as u32).to_be_bytes());
                if lun.id.unmap {
                    d[14] = 0x80; // LBPME
                }
                Ok(alloc(d, a))
            }
            Command::Read { lba, blocks, .. } => {
                if blocks > MAX_TRANSFER_BLOCKS {
                    return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CDB).into());
                }
                self.check_range(lba, blocks)?;
                let len = blocks as usize * BLOCK as usize;
                if ctx.data_in_len < len {
                    return Err(Fail::Overrun);
                }
                let mut buf = vec![0u8; len];
                self.backend
                    .read_at(&mut buf, lba * BLOCK)
                    .map_err(|e| io_sense(&e, false))?;
                Ok(buf)
            }
            Command::Write { lba, blocks, fua } => {
                self.check_writable()?;
                if blocks > MAX_TRANSFER_BLOCKS {
                    return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CDB).into());
                }
                self.check_range(lba, blocks)?;
                let len = blocks as usize * BLOCK as usize;
                let Some(data) = ctx.data_out.get(..len) else {
                    return Err(Fail::Overrun);
                };
                self.backend
                    .write_at(data, lba * BLOCK)
                    .map_err(|e| io_sense(&e, true))?;
                if fua || !lun.state().mode.wce {
                    self.flush()?;
                }
                Ok(Vec::new())
            }
            Command::Verify {
                lba,
                blocks,
                bytchk,
            } => {
                if blocks > MAX_TRANSFER_BLOCKS {
                    return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CDB).into());
                }
                self.check_range(lba, blocks)?;
                let len = blocks as usize * BLOCK as usize;
                let expected: Option<&[u8]> = match bytchk {
                    ByteCheck::None => None,
                    ByteCheck::All => Some(ctx.data_out.get(..len).ok_or(Fail::Overrun)?),
                    ByteCheck::One => {
                        Some(ctx.data_out.get(..BLOCK as usize).ok_or(Fail::Overrun)?)
                    }
                };
                let mut buf = vec![0u8; len];
                self.backend
                    .read_at(&mut buf, lba * BLOCK)
                    .map_err(|e| io_sense(&e, false))?;
                if let Some(exp) = expected {
                    let bad = buf
                        .iter()
                        .enumerate()
                        .position(|(i, b)| *b != exp[i % exp.len()]);
                    if let Some(off) = bad {
                        return Err(Sense {
                            information: Some(off as u64),
                            ..Sense::new(SenseKey::Miscompare, Asc::MISCOMPARE_DURING_VERIFY)
                        }
                        .into());
                    }
                }
                Ok(Vec::new())
            }
            Command::SynchronizeCache { lba, blocks } => {
                self.check_range(lba, blocks)?;
                self.flush()?;
                Ok(Vec::new())
            }
            Command::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
            } => {
                self.check_writable()?;
                if blocks == 0 || blocks > MAX_WRITE_SAME_BLOCKS {
                    // WSNZ is set; the limit is in the block limits page.
                    return Err(Sense::illegal(Asc::INVALID_FIELD_IN_CDB).into());
                }
                if unmap && !lun.id.unmap {
                    return Err(Sense::invalid_cdb(1, Some(3)).into());
                }
                self.check_range(lba, blocks)?;
                let zeros = [0u8; BLOCK as usize];
                let block: &[u8] = if ndob {
                    &zeros
                } else {
                    ctx.data_out.get(..BLOCK as usize).ok_or(Fail::Overrun)?
                };
                let offset = lba * BLOCK;
                let len = blocks as u64 * BLOCK;
                if unmap && block.iter().all(|&b| b == 0) {
                    // SBC-4 5.50: unmapping is one of the allowed outcomes;
                    // LBPRZ is 0, so reads after it need not be zeros.
                    self.backend
                        .discard(offset, len)
                        .map_err(|e| io_sense(&e, true))?;
                } else {
                    let chunk_blocks = 256u64.min(blocks as u64);
                    let chunk: Vec<u8> = block
                        .iter()
                        .copied()
                        .cycle()
                        .take((chunk_blocks * BLOCK) as usize)
                        .collect();
                    let mut done = 0u64;
                    while done < len {
                        let n = (len - done).min(chunk.len() as u64) as usize;
                        self.backend
                            .write_at(&chunk[..n], offset + done)
                            .map_err(|e| io_sense(&e, true))?;
                        done += n as u64;
                    }
                }
                if !lun.state().mode.wce {
                    self.flush()?;
                }
                Ok(Vec::new())
            }
            Command::Unmap { len } => {
                self.check_writable()?;
                self.unmap(ctx, len)?;
                Ok(Vec::new())
            }
            Command::ModeSense { req, alloc: a } => {
                let facts = self.facts();
                let st = lun.state();
                Ok(alloc(mode::sense(&req, &st.mode, &facts)?, a))
            }
            Command::ModeSelect { ten, sp, len } => {
                if sp {
                    return Err(Sense::invalid_cdb(1, Some(0)).into());
                }
                let list = ctx.data_out.get(..len as usize).ok_or(Fail::Overrun)?;
                let facts = self.facts();
                let mut st = lun.state();
                let new = mode::select(ten, list, &st.mode, &facts)?;
                if new != st.mode {
                    st.mode = new;
                    st.ua
                        .broadcast_except(ctx.nexus, UnitAttention::ModeParametersChanged);
                }
                Ok(Vec::new())
            }
            Command::StartStopUnit {
                power_condition,
                loej,
                ..
            } => {
                check_power_condition(power_condition)?;
                if loej && power_condition == 0 {
                    // Not a removable medium.
                    return Err(Sense::invalid_cdb(4, Some(1)).into());
                }
                Ok(Vec::new())
            }
            Command::PersistentReserveIn { action, alloc: a } => {
                let d = store::read(&*self.store, |s| s.in_data(action)).map_err(store_failure)?;
                Ok(alloc(d, a))
            }
            Command::PersistentReserveOut {
                action,
                scope,
                pr_type,
                len,
            } => {
                if ctx.data_out.len() < len as usize {
                    return Err(Fail::Overrun);
                }
                let p = PrOutParams::parse(len, ctx.data_out)?;
                let r = store::modify(&*self.store, |s| {
                    let r = s.out(ctx.nexus, action, scope, pr_type, &p);
                    (r.is_ok(), r)
                })
                .map_err(store_failure)?;
                match r {
                    Ok(_) => Ok(Vec::new()),
                    Err(PrError::Conflict) => Err(Fail::Conflict),
                    Err(PrError::Check(s)) => Err(s.into()),
                }
            }
            _ => Err(Sense::invalid_opcode().into()),
        }
    }

    /// UNMAP's parameter list (SBC-4 5.32.2).
    fn unmap(&self, ctx: &Ctx<'_>, len: u32) -> Result<(), Fail> {
        if len == 0 {
            return Ok(());
        }
        if len < 8 {
            return Err(Sense::param_list_length().into());
        }
        let list = ctx.data_out.get(..len as usize).ok_or(Fail::Overrun)?;
        let data_len = u16::from_be_bytes([list[0], list[1]]) as usize;
        let bd_len = u16::from_be_bytes([list[2], list[3]]) as usize;
        if data_len + 2 > list.len() || bd_len + 8 > list.len() {
            return Err(Sense::param_list_length().into());
        }
        // A trailing partial descriptor is ignored.
        let count = bd_len / 16;
        if count > MAX_UNMAP_DESCRIPTORS as usize {
            return Err(Sense::invalid_param(2, None).into());
        }
        let mut ranges = Vec::with_capacity(count);
        let mut total = 0u64;
        for i in 0..count {
            let d = &list[8 + i * 16..8 + (i + 1) * 16];
            let mut l = [0u8; 8];
            l.copy_from_slice(&d[0..8]);
            let lba = u64::from_be_bytes(l);
            let n = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
            if n == 0 {
                continue;
            }
            self.check_range(lba, n)?;
            total += n as u64;
            if total > MAX_UNMAP_BLOCKS as u64 {
                return Err(Sense::invalid_param(8 + i * 16 + 8, None).into());
            }
            ranges.push((lba, n));
        }
        for (lba, n) in ranges {
            self.backend
                .discard(lba * BLOCK, n as u64 * BLOCK)
                .map_err(|e| io_sense(&e, true))?;
        }
        Ok(())
    }
}
