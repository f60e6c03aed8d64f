//! Where a VHDX file's bytes live: a small trait over positioned I/O, so
//! tests can put a disk in memory or inject faults, and a read-only open of a
//! dirty file can see its replayed log without touching the file.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// Positioned byte storage under a VHDX file.
pub trait Storage: Send {
    /// Fills `buf` from `offset`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`, extending the storage if needed.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable.
    fn flush(&mut self) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros) to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// True when the storage holds no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
}

impl Storage for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_exact_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// A storage held in memory, shareable so a test can look at the bytes
/// after the disk that wrote them is gone.
#[derive(Clone, Default)]
pub struct MemStorage {
    /// The bytes.
    pub data: Arc<Mutex<Vec<u8>>>,
}

impl MemStorage {
    /// Memory storage holding `data`.
    pub fn new(data: Vec<u8>) -> MemStorage {
        MemStorage {
            data: Arc::new(Mutex::new(data)),
        }
    }

    /// A copy of the current bytes.
    pub fn snapshot(&self) -> Vec<u8> {
        lock(&self.data).clone()
    }
}

fn lock(m: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    // A panic while holding the lock leaves plain bytes: still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past end of storage")
}

/// Largest in-memory storage: beyond it writes fail instead of exhausting memory.
const MEM_LIMIT: u64 = 1 << 34;

impl Storage for MemStorage {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = lock(&self.data);
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > d.len() as u64 {
            return Err(eof());
        }
        buf.copy_from_slice(&d[offset as usize..end as usize]);
        Ok(())
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = lock(&self.data);
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= MEM_LIMIT)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::OutOfMemory, "memory storage too large")
            })?;
        if end > d.len() as u64 {
            d.resize(end as usize, 0);
        }
        d[offset as usize..end as usize].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.data).len() as u64)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        if len > MEM_LIMIT {
            return Err(io::Error::new(
                io::ErrorKind::OutOfMemory,
                "memory storage too large",
            ));
        }
        lock(&self.data).resize(len as usize, 0);
        Ok(())
    }
}

/// One change an [`Overlay`] shows over its base.
#[derive(Clone, Debug)]
pub enum Patch {
    /// These bytes at this offset.
    Data(u64, Vec<u8>),
    /// This many zero bytes at this offset.
    Zero(u64, u64),
}

/// A read-only view of a storage with patches laid over it: how a read-only
/// open sees a replayed log while leaving the file as it is.
pub(crate) struct Overlay {
    pub(crate) base: Box<dyn Storage>,
    pub(crate) patches: Vec<Patch>,
    pub(crate) len: u64,
}

impl Storage for Overlay {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(eof)?;
        if end > self.len {
            return Err(eof());
        }
        // The log may extend the file: bytes past the base's end read as zero.
        let base_len = self.base.len()?;
        if offset < base_len {
            let n = (base_len.min(end) - offset) as usize;
            self.base.read_at(&mut buf[..n], offset)?;
            buf[n..].fill(0);
        } else {
            buf.fill(0);
        }
        for p in &self.patches {
            let (start, plen) = match p {
                Patch::Data(o, d) => (*o, d.len() as u64),
                Patch::Zero(o, l) => (*o, *l),
            };
            let (lo, hi) = (start.max(offset), start.saturating_add(plen).min(end));
            if lo >= hi {
                continue;
            }
            let dst = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            match p {
                Patch::Data(_, d) => {
                    dst.copy_from_slice(&d[(lo - start) as usize..(hi - start) as usize])
                }
                Patch::Zero(..) => dst.fill(0),
            }
        }
        Ok(())
    }
    fn write_at(&mut self, _buf: &[u8], _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "read-only view of a dirty VHDX",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.len)
    }
    fn set_len(&mut self, _len: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "read-only view of a dirty VHDX",
        ))
    }
}
