//! Creating new fixed, dynamic and differencing disks.

use crate::bat::{self, Geometry};
use crate::disk::{Disk, DiskType, ParentSource};
use crate::guid::Guid;
use crate::header::{self, Header, HEADER_OFFSETS, MIB};
use crate::metadata::{Metadata, ParentLocator, MAX_VIRTUAL_SIZE};
use crate::region::{Region, RegionTable, REGION_TABLE_OFFSETS};
use crate::storage::Storage;
use crate::Error;
use std::path::{Component, Path, PathBuf};

const LOG_OFFSET: u64 = MIB;
const LOG_LENGTH: u32 = MIB as u32;
const METADATA_OFFSET: u64 = 2 * MIB;
const METADATA_LENGTH: u32 = MIB as u32;
const BAT_OFFSET: u64 = 3 * MIB;

/// What to create.
#[derive(Clone, Debug)]
pub struct CreateOptions {
    /// Size the guest sees in bytes (a multiple of the logical sector size).
    /// Ignored for differencing disks, which take the parent's.
    pub size: u64,
    /// Fixed, dynamic or differencing.
    pub disk_type: DiskType,
    /// Payload block size; `None` picks 32 MiB (2 MiB for differencing).
    pub block_size: Option<u32>,
    /// 512 or 4096.
    pub logical_sector_size: u32,
    /// 512 or 4096.
    pub physical_sector_size: u32,
    /// The parent of a differencing disk.
    pub parent: Option<PathBuf>,
}

impl CreateOptions {
    /// A dynamic disk of `size` bytes with default parameters.
    pub fn dynamic(size: u64) -> CreateOptions {
        CreateOptions {
            size,
            disk_type: DiskType::Dynamic,
            block_size: None,
            logical_sector_size: 512,
            physical_sector_size: 4096,
            parent: None,
        }
    }

    /// A fixed disk of `size` bytes.
    pub fn fixed(size: u64) -> CreateOptions {
        CreateOptions {
            disk_type: DiskType::Fixed,
            ..CreateOptions::dynamic(size)
        }
    }

    /// A differencing disk over `parent`.
    pub fn differencing(parent: impl Into<PathBuf>) -> CreateOptions {
        CreateOptions {
            disk_type: DiskType::Differencing,
            parent: Some(parent.into()),
            ..CreateOptions::dynamic(0)
        }
    }

    /// Sets the block size.
    pub fn block_size(mut self, bs: u32) -> CreateOptions {
        self.block_size = Some(bs);
        self
    }

    /// Sets the logical and physical sector sizes.
    pub fn sectors(mut self, logical: u32, physical: u32) -> CreateOptions {
        self.logical_sector_size = logical;
        self.physical_sector_size = physical;
        self
    }
}

/// Creates a new VHDX at `path` (which must not exist) and opens it read-write.
pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<Disk, Error> {
    let path = path.as_ref();
    let mut parent = None;
    if opts.disk_type == DiskType::Differencing {
        let ppath = opts
            .parent
            .as_ref()
            .ok_or_else(|| Error::InvalidOption("a differencing disk needs a parent".into()))?;
        let p = Disk::open(ppath, false).map_err(|e| Error::Parent {
            path: ppath.clone(),
            source: Box::new(e),
        })?;
        let loc = locator_for(path, ppath, p.header().data_write_guid);
        parent = Some((p, loc));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Error::Open {
            path: path.to_path_buf(),
            source: e,
        })?;
    let result = create_on(Box::new(file), opts, parent);
    match result {
        Ok(mut d) => {
            d.path = Some(path.to_path_buf());
            Ok(d)
        }
        Err(e) => {
            // Leave no half-made file behind.
            let _ = std::fs::remove_file(path);
            Err(e)
        }
    }
}

/// Builds a parent locator for a child at `child` over `parent`.
pub fn locator_for(child: &Path, parent: &Path, linkage: Guid) -> ParentLocator {
    let abs = |p: &Path| -> PathBuf { std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()) };
    let (c, p) = (abs(child), abs(parent));
    let mut entries = vec![("parent_linkage".to_string(), format!("{linkage:?}"))];
    if let Some(rel) = relative(c.parent().unwrap_or(Path::new("/")), &p) {
        let rel = rel.to_string_lossy().replace('/', "\\");
        let rel = if rel.starts_with("..") {
            rel
        } else {
            format!(".\\{rel}")
        };
        entries.push(("relative_path".into(), rel));
    }
    // Win32 separators, as other tools split the name at the last '\\'.
    entries.push((
        "absolute_win32_path".into(),
        p.to_string_lossy().replace('/', "\\"),
    ));
    ParentLocator { entries }
}

/// `to` relative to directory `from` (both absolute).
fn relative(from: &Path, to: &Path) -> Option<PathBuf> {
    let f: Vec<Component> = from.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return None;
    }
    let mut r = PathBuf::new();
    for _ in common..f.len() {
        r.push("..");
    }
    for c in &t[common..] {
        r.push(c);
    }
    Some(r)
}

/// Creates a VHDX in `storage` (which should be empty) and opens it.
pub fn create_on(
    mut file: Box<dyn Storage>,
    opts: &CreateOptions,
    parent: Option<(Disk, ParentLocator)>,
) -> Result<Disk, Error> {
    let has_parent = opts.disk_type == DiskType::Differencing;
    if has_parent != parent.is_some() {
        return Err(Error::InvalidOption(
            "a differencing disk, and only one, needs a parent".into(),
        ));
    }
    let (logical, physical) = match &parent {
        Some((p, _)) => (p.logical_sector_size(), opts.physical_sector_size),
        None => (opts.logical_sector_size, opts.physical_sector_size),
    };
    let size = parent.as_ref().map_or(opts.size, |(p, _)| p.virtual_size());
    let bs = opts.block_size.unwrap_or(if has_parent {
        2 * MIB as u32
    } else {
        32 * MIB as u32
    });
    for (name, v) in [
        ("logical sector size", logical),
        ("physical sector size", physical),
    ] {
        if v != 512 && v != 4096 {
            return Err(Error::InvalidOption(format!(
                "{name} {v} is neither 512 nor 4096"
            )));
        }
    }
    if !bs.is_power_of_two() || !(MIB as u32..=256 * MIB as u32).contains(&bs) {
        return Err(Error::InvalidOption(format!(
            "block size {bs} is not a power of two in 1–256 MiB"
        )));
    }
    if size == 0 || size > MAX_VIRTUAL_SIZE || !size.is_multiple_of(logical as u64) {
        return Err(Error::InvalidOption(format!(
            "size {size} is not a multiple of {logical} in (0, 64 TiB]"
        )));
    }
    let meta = Metadata {
        block_size: bs,
        leave_blocks_allocated: opts.disk_type == DiskType::Fixed,
        has_parent,
        virtual_size: size,
        disk_id: Guid::random(),
        logical_sector_size: logical,
        physical_sector_size: physical,
        parent_locator: parent.as_ref().map(|(_, l)| l.clone()),
        virtual_size_at: Metadata::layout_virtual_size_at(),
    };
    let geom = Geometry::new(size, bs, logical, has_parent);
    let bat_len = geom.region_bytes();
    let regions = RegionTable {
        bat: Region {
            offset: BAT_OFFSET,
            length: u32::try_from(bat_len)
                .map_err(|_| Error::InvalidOption("BAT would exceed 4 GiB".into()))?,
        },
        metadata: Region {
            offset: METADATA_OFFSET,
            length: METADATA_LENGTH,
        },
        others: Vec::new(),
    };
    let w = |f: &mut Box<dyn Storage>, b: &[u8], o: u64| {
        f.write_at(b, o)
            .map_err(|e| Error::io("writing new disk", e))
    };
    let mut end = BAT_OFFSET + bat_len;
    let mut bat_bytes = vec![0u8; (geom.entries * 8) as usize];
    if opts.disk_type == DiskType::Fixed {
        for b in 0..geom.payload_blocks {
            let i = geom.payload_index(b);
            let e = bat::entry(bat::PAYLOAD_FULLY_PRESENT, end);
            bat_bytes[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
            end += geom.block_size;
        }
    }
    w(&mut file, &header::identifier("tern vhdx"), 0)?;
    let rt = regions.to_bytes();
    for off in REGION_TABLE_OFFSETS {
        w(&mut file, &rt, off)?;
    }
    w(&mut file, &meta.to_bytes(), METADATA_OFFSET)?;
    w(&mut file, &bat_bytes, BAT_OFFSET)?;
    file.set_len(end)
        .map_err(|e| Error::io("sizing new disk", e))?;
    file.flush()
        .map_err(|e| Error::io("flushing new disk", e))?;
    // Headers last: until they land, the file is not a VHDX.
    let h = Header {
        sequence: 0,
        file_write_guid: Guid::random(),
        data_write_guid: Guid::random(),
        log_guid: Guid::ZERO,
        log_version: 0,
        version: 1,
        log_length: LOG_LENGTH,
        log_offset: LOG_OFFSET,
    };
    for (i, off) in HEADER_OFFSETS.iter().enumerate() {
        let h = Header {
            sequence: i as u64,
            ..h.clone()
        };
        w(&mut file, &h.to_bytes(), *off)?;
    }
    file.flush()
        .map_err(|e| Error::io("flushing new disk", e))?;
    let ps = match parent {
        Some((p, _)) => ParentSource::Given(Box::new(p)),
        None => ParentSource::None,
    };
    Disk::open_storage(file, true, ps)
}
