//! The entry point fuzzers drive: open arbitrary bytes as a VHDX and read
//! from it. Any outcome but a panic (or a huge allocation) is fine.

use crate::storage::MemStorage;
use crate::{Disk, ParentSource};

/// Opens `data` read-only (and, if that works, read-write on a copy, which
/// replays the log in place), then reads a few ranges. Never panics on
/// malformed input; returns whether the open succeeded.
pub fn open_and_read(data: &[u8]) -> bool {
    let mut opened = false;
    for writable in [false, true] {
        let storage = Box::new(MemStorage::new(data.to_vec()));
        let Ok(mut d) = Disk::open_storage(storage, writable, ParentSource::None) else {
            continue;
        };
        opened = true;
        let size = d.virtual_size();
        let _ = d.info();
        let _ = d.extents();
        let mut buf = vec![0u8; 64 * 1024];
        // The start, the end, a block boundary, and an unaligned range.
        let bs = d.block_size() as u64;
        for off in [
            0,
            size.saturating_sub(65536),
            bs.saturating_sub(100),
            size / 3 + 7,
        ] {
            let n = (size.saturating_sub(off)).min(buf.len() as u64) as usize;
            let _ = d.read_at(&mut buf[..n], off);
        }
        if writable {
            let _ = d.write_at(&buf[..512.min(size as usize)], 0);
            let _ = d.trim(0, size);
            let _ = d.flush();
        }
    }
    opened
}
