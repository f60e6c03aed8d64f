//! Creating an empty disk of a given [`DiskLayout`]: the target of a
//! mirror (storage live migration, shared-nothing migration), made like
//! the source so that a dynamic VHDX stays sparse with the same block size.

use std::path::Path;

use crate::{BlockError, DiskFormat, DiskLayout, VhdxType, SECTOR_SIZE};

/// Creates a new, all-zero disk at `path` (which must not exist) laid out
/// as `layout`: a sparse raw file, or a VHDX of the layout's kind, block
/// size and sector sizes. A differencing layout is created as a dynamic
/// VHDX: a copy made from what the guest reads holds its whole chain.
/// On error no file is left behind (one that existed is never touched).
pub fn create(path: &Path, layout: &DiskLayout) -> Result<(), BlockError> {
    if layout.capacity == 0 || !layout.capacity.is_multiple_of(SECTOR_SIZE) {
        return Err(BlockError::BadSize(layout.capacity));
    }
    let made = |source| BlockError::Create {
        path: path.into(),
        source,
    };
    match layout.format {
        DiskFormat::Raw => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(made)?;
            if let Err(e) = f.set_len(layout.capacity) {
                drop(f);
                let _ = std::fs::remove_file(path);
                return Err(made(e));
            }
            Ok(())
        }
        DiskFormat::Vhdx => {
            let base = match layout.vhdx_type {
                Some(VhdxType::Fixed) => vhdx::CreateOptions::fixed(layout.capacity),
                _ => vhdx::CreateOptions::dynamic(layout.capacity),
            };
            let mut opts = base.sectors(layout.logical_sector, layout.physical_sector);
            if let Some(bs) = layout.vhdx_block_size {
                opts = opts.block_size(bs);
            }
            // vhdx::create refuses an existing file and removes its own
            // half-made one.
            let disk = vhdx::create(path, &opts).map_err(|source| BlockError::Vhdx {
                path: path.into(),
                source,
            })?;
            disk.close().map_err(|source| {
                let _ = std::fs::remove_file(path);
                BlockError::Vhdx {
                    path: path.into(),
                    source,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BlockBackend;

    #[test]
    fn raw_and_vhdx_copies_keep_their_layout() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.img");
        create(&raw, &DiskLayout::raw(8 << 20)).unwrap();
        let d = crate::raw::RawDisk::open(&raw, false).unwrap();
        assert_eq!(d.capacity(), 8 << 20);
        assert!(
            d.allocated().unwrap().is_empty(),
            "a new raw file is sparse"
        );
        drop(d);
        let layout = DiskLayout {
            vhdx_block_size: Some(4 << 20),
            vhdx_type: Some(VhdxType::Dynamic),
            ..DiskLayout::raw(16 << 20).with_format(DiskFormat::Vhdx)
        };
        let v = dir.path().join("a.vhdx");
        create(&v, &layout).unwrap();
        let d = crate::vhdx_disk::VhdxDisk::open(&v, false).unwrap();
        assert_eq!(d.layout(), layout);
        assert!(d.allocated().unwrap().is_empty());
        d.close().unwrap();
    }

    #[test]
    fn existing_files_and_bad_sizes_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, b"keep").unwrap();
        let e = create(&p, &DiskLayout::raw(1 << 20)).unwrap_err();
        assert!(matches!(e, BlockError::Create { .. }), "{e}");
        let v = dir.path().join("x.vhdx");
        std::fs::write(&v, b"keep").unwrap();
        let l = DiskLayout::raw(1 << 20).with_format(DiskFormat::Vhdx);
        assert!(matches!(create(&v, &l), Err(BlockError::Vhdx { .. })));
        assert_eq!(std::fs::read(&p).unwrap(), b"keep");
        assert_eq!(std::fs::read(&v).unwrap(), b"keep");
        let n = dir.path().join("n.img");
        assert!(matches!(
            create(&n, &DiskLayout::raw(1000)),
            Err(BlockError::BadSize(1000))
        ));
        assert!(!n.exists());
        let e = create(&dir.path().join("no/such/dir.img"), &DiskLayout::raw(4096));
        assert!(matches!(e, Err(BlockError::Create { .. })));
    }
}
