//! What a boot source is read from: a disk or DVD image as the guest sees
//! it (any [`Medium`], e.g. a VHDX through the block layer), and windows
//! onto it (partitions) with the `Read + Seek` the file-system crates want.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Arc;

/// A byte-addressed, read-only image.
pub trait Medium {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Whether the medium has no bytes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Fills `buf` from byte `offset`; a range past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

/// A plain file as a medium (raw images, ISO files).
impl Medium for std::fs::File {
    fn len(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// Bytes in memory as a medium (tests, fuzzing).
impl Medium for Vec<u8> {
    fn len(&self) -> u64 {
        self.as_slice().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| past_end())?;
        let end = start.checked_add(buf.len()).ok_or_else(past_end)?;
        let src = self.get(start..end).ok_or_else(past_end)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

fn past_end() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "read past the end of the medium",
    )
}

/// `[base, base + len)` of a medium, with a cursor: what a partition's
/// file system is read through. Writes fail: boot sources are only read.
#[derive(Clone)]
pub struct Window {
    medium: Arc<dyn Medium>,
    base: u64,
    len: u64,
    pos: u64,
}

impl Window {
    /// The window; `base + len` must lie within the medium.
    pub fn new(medium: Arc<dyn Medium>, base: u64, len: u64) -> io::Result<Window> {
        match base.checked_add(len) {
            Some(end) if end <= medium.len() => Ok(Window {
                medium,
                base,
                len,
                pos: 0,
            }),
            _ => Err(past_end()),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset` within the window.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).ok_or_else(past_end)?;
        if end > self.len {
            return Err(past_end());
        }
        self.medium.read_at(buf, self.base + offset)
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.medium.read_at(&mut buf[..n], self.base + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let p = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        self.pos = p;
        Ok(p)
    }
}

impl Write for Window {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "boot sources are read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_stay_inside_and_refuse_writes() {
        let m: Arc<dyn Medium> = Arc::new((0..100u8).collect::<Vec<u8>>());
        let mut w = Window::new(m.clone(), 10, 20).unwrap();
        let mut b = [0u8; 8];
        w.seek(SeekFrom::Start(16)).unwrap();
        assert_eq!(w.read(&mut b).unwrap(), 4);
        assert_eq!(&b[..4], &[26, 27, 28, 29]);
        assert_eq!(w.read(&mut b).unwrap(), 0);
        assert!(w.write(b"x").is_err());
        assert!(Window::new(m.clone(), 90, 20).is_err());
        assert!(Window::new(m, u64::MAX, 2).is_err());
        assert!(w.read_exact_at(&mut b, 15).is_err());
        assert!(w.seek(SeekFrom::Current(-100)).is_err());
    }
}
