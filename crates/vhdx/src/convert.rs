//! Converting between raw images and fixed or dynamic VHDX.

use crate::create::{create, CreateOptions};
use crate::disk::{Disk, DiskType};
use crate::header::MIB;
use crate::Error;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The format to convert to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// A raw (sparse) image.
    Raw,
    /// A fixed VHDX.
    Fixed,
    /// A dynamic VHDX.
    Dynamic,
}

/// What a conversion did.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// The disk's size.
    pub virtual_size: u64,
    /// Bytes of non-zero data written.
    pub bytes_written: u64,
}

enum Source {
    Raw(File, u64),
    Vhdx(Box<Disk>),
}

impl Source {
    fn read(&mut self, buf: &mut [u8], pos: u64) -> Result<(), Error> {
        match self {
            Source::Raw(f, len) => {
                let n = len.saturating_sub(pos).min(buf.len() as u64) as usize;
                f.read_exact_at(&mut buf[..n], pos)
                    .map_err(|e| Error::io("reading source", e))?;
                buf[n..].fill(0);
                Ok(())
            }
            Source::Vhdx(d) => d.read_at(buf, pos),
        }
    }
}

/// True when the file at `path` starts with the VHDX signature.
pub fn is_vhdx(path: &Path) -> Result<bool, Error> {
    let f = File::open(path).map_err(|e| Error::Open {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut sig = [0u8; 8];
    Ok(f.read_exact_at(&mut sig, 0).is_ok() && &sig == b"vhdxfile")
}

/// Converts `src` (raw or any VHDX, a differencing one flattened) to a new
/// file `dst` in format `to`. A raw source's size is rounded up to 512 bytes.
pub fn convert(
    src: &Path,
    dst: &Path,
    to: Target,
    block_size: Option<u32>,
) -> Result<ConvertReport, Error> {
    let mut source = if is_vhdx(src)? {
        Source::Vhdx(Box::new(Disk::open(src, false)?))
    } else {
        let f = File::open(src).map_err(|e| Error::Open {
            path: src.to_path_buf(),
            source: e,
        })?;
        let len = f
            .metadata()
            .map_err(|e| Error::io("reading source size", e))?
            .len();
        Source::Raw(f, len)
    };
    let size = match &source {
        Source::Raw(_, len) => len.next_multiple_of(512),
        Source::Vhdx(d) => d.virtual_size(),
    };
    let mut written = 0;
    let mut buf = vec![0u8; MIB as usize];
    match to {
        Target::Raw => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(dst)
                .map_err(|e| Error::Open {
                    path: dst.to_path_buf(),
                    source: e,
                })?;
            f.set_len(size)
                .map_err(|e| Error::io("sizing destination", e))?;
            let mut pos = 0;
            while pos < size {
                let n = (size - pos).min(MIB) as usize;
                source.read(&mut buf[..n], pos)?;
                if buf[..n].iter().any(|&b| b != 0) {
                    f.write_all_at(&buf[..n], pos)
                        .map_err(|e| Error::io("writing destination", e))?;
                    written += n as u64;
                }
                pos += n as u64;
            }
            f.sync_all()
                .map_err(|e| Error::io("flushing destination", e))?;
        }
        Target::Fixed | Target::Dynamic => {
            let mut opts = if to == Target::Fixed {
                CreateOptions::fixed(size)
            } else {
                CreateOptions::dynamic(size)
            };
            opts.block_size = block_size;
            if let Source::Vhdx(d) = &source {
                opts.logical_sector_size = d.logical_sector_size();
                opts.physical_sector_size = d.metadata().physical_sector_size;
                if block_size.is_none() && d.disk_type() != DiskType::Differencing {
                    opts.block_size = Some(d.block_size());
                }
            }
            let mut d = create(dst, &opts)?;
            let mut pos = 0;
            while pos < size {
                let n = (size - pos).min(MIB) as usize;
                source.read(&mut buf[..n], pos)?;
                // Zeros need no write: new dynamic blocks and new fixed
                // disks (sparse files) read as zeros already.
                if buf[..n].iter().any(|&b| b != 0) {
                    d.write_at(&buf[..n], pos)?;
                    written += n as u64;
                }
                pos += n as u64;
            }
            d.flush()?;
            d.close()?;
        }
    }
    Ok(ConvertReport {
        virtual_size: size,
        bytes_written: written,
    })
}
