//! Opening a VHDX: headers, region table, metadata, BAT and log replay,
//! and the parent chain of a differencing disk.

use super::*;

impl Disk {
    /// Opens the VHDX at `path`, read-only or read-write, with its parent
    /// chain (read-only). A dirty log is replayed: in place when writable,
    /// in memory otherwise.
    pub fn open(path: impl AsRef<Path>, writable: bool) -> Result<Disk, Error> {
        let path = path.as_ref();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::Open {
                path: path.to_path_buf(),
                source: e,
            })?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut d = Disk::open_storage(Box::new(file), writable, ParentSource::Resolve(dir))?;
        d.path = Some(path.to_path_buf());
        Ok(d)
    }

    /// Opens a VHDX held in `storage`.
    pub fn open_storage(
        storage: Box<dyn Storage>,
        writable: bool,
        parent: ParentSource,
    ) -> Result<Disk, Error> {
        Disk::open_inner(storage, writable, parent, false)
    }

    /// Opens tolerating BAT damage (noted in `problems`): for `check`.
    pub(crate) fn open_inner(
        mut file: Box<dyn Storage>,
        writable: bool,
        parent: ParentSource,
        lenient: bool,
    ) -> Result<Disk, Error> {
        let mut file_len = file.len().map_err(io("reading file length"))?;
        if file_len < 320 * 1024 {
            return Err(Error::TooShort(file_len));
        }
        let mut sig = [0u8; 8];
        file.read_at(&mut sig, 0)
            .map_err(io("reading identifier"))?;
        header::check_identifier(&sig)?;
        let mut h = [vec![0u8; HEADER_SIZE], vec![0u8; HEADER_SIZE]];
        for (b, off) in h.iter_mut().zip(HEADER_OFFSETS) {
            file.read_at(b, off).map_err(io("reading headers"))?;
        }
        let (mut hdr, slot, mut problems) = header::choose(&h[0], &h[1])?;

        // Replay the log before reading anything else it may have changed.
        let mut replayed = 0;
        let mut max_seq = 0;
        if !hdr.log_guid.is_zero() {
            let (lo, ll) = (hdr.log_offset, hdr.log_length as u64);
            if lo.checked_add(ll).is_none_or(|e| e > file_len) {
                return Err(Error::OutsideFile {
                    what: "log",
                    offset: lo,
                    len: ll,
                    file_len,
                });
            }
            let mut buf = vec![0u8; ll as usize];
            file.read_at(&mut buf, lo).map_err(io("reading log"))?;
            if let Some(r) = log::scan(&buf, hdr.log_guid, file_len)? {
                replayed = r.entries;
                max_seq = r.max_sequence;
                let new_len = file_len.max(r.last_file_offset);
                if writable {
                    for p in &r.patches {
                        match p {
                            Patch::Data(o, d) => file.write_at(d, *o),
                            Patch::Zero(o, l) => write_zeros(&mut *file, *o, *l),
                        }
                        .map_err(io("replaying log"))?;
                    }
                    if new_len > file_len {
                        file.set_len(new_len).map_err(io("replaying log"))?;
                    }
                    file.flush().map_err(io("replaying log"))?;
                } else {
                    file = Box::new(Overlay {
                        base: file,
                        patches: r.patches,
                        len: new_len,
                    });
                }
                file_len = new_len;
            }
        }

        let mut rt = [vec![0u8; REGION_TABLE_SIZE], vec![0u8; REGION_TABLE_SIZE]];
        for (b, off) in rt.iter_mut().zip(REGION_TABLE_OFFSETS) {
            file.read_at(b, off).map_err(io("reading region tables"))?;
        }
        let (regions, notes) = region::choose(&rt[0], &rt[1])?;
        problems.extend(notes);

        let mr = regions.metadata;
        if mr.offset + crate::metadata::TABLE_SIZE as u64 > file_len {
            return Err(Error::OutsideFile {
                what: "metadata region",
                offset: mr.offset,
                len: mr.length as u64,
                file_len,
            });
        }
        let mut table = vec![0u8; crate::metadata::TABLE_SIZE];
        file.read_at(&mut table, mr.offset)
            .map_err(io("reading metadata table"))?;
        let meta = Metadata::parse(&table, mr.length, &mut |off, len| {
            let mut b = vec![0u8; len as usize];
            file.read_at(&mut b, mr.offset + off as u64).map(|_| b)
        })?;
        let geom = Geometry::new(
            meta.virtual_size,
            meta.block_size,
            meta.logical_sector_size,
            meta.has_parent,
        );
        let br = regions.bat;
        if (br.length as u64) < geom.entries * 8 {
            return Err(bat::BatError::TooSmall {
                have: br.length as u64 / 8,
                need: geom.entries,
            }
            .into());
        }
        if br.offset + geom.entries * 8 > file_len {
            return Err(Error::OutsideFile {
                what: "BAT",
                offset: br.offset,
                len: geom.entries * 8,
                file_len,
            });
        }
        let mut raw = vec![0u8; (geom.entries * 8) as usize];
        file.read_at(&mut raw, br.offset)
            .map_err(io("reading BAT"))?;
        let mut bat: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        drop(raw);

        let mut dirty_bat = BTreeSet::new();
        let mut alloc_end = file_len.next_multiple_of(MIB);
        for r in regions.all() {
            alloc_end = alloc_end.max(r.offset + r.length as u64);
        }
        alloc_end = alloc_end.max(hdr.log_offset + hdr.log_length as u64);
        for (i, e) in bat.iter_mut().enumerate() {
            let is_bitmap = geom.is_bitmap_index(i as u64);
            let st = bat::state(*e);
            let present = if is_bitmap {
                match st {
                    bat::BITMAP_NOT_PRESENT => false,
                    bat::BITMAP_PRESENT => true,
                    _ => {
                        bad_entry(
                            lenient,
                            &mut problems,
                            e,
                            i,
                            &mut dirty_bat,
                            bat::BatError::BadState {
                                index: i as u64,
                                state: st,
                            },
                        )?;
                        continue;
                    }
                }
            } else {
                match st {
                    bat::PAYLOAD_FULLY_PRESENT => true,
                    bat::PAYLOAD_PARTIALLY_PRESENT if meta.has_parent => true,
                    bat::PAYLOAD_NOT_PRESENT
                    | bat::PAYLOAD_UNDEFINED
                    | bat::PAYLOAD_ZERO
                    | bat::PAYLOAD_UNMAPPED => false,
                    _ => {
                        bad_entry(
                            lenient,
                            &mut problems,
                            e,
                            i,
                            &mut dirty_bat,
                            bat::BatError::BadState {
                                index: i as u64,
                                state: st,
                            },
                        )?;
                        continue;
                    }
                }
            };
            if present {
                let off = bat::offset(*e);
                let len = if is_bitmap {
                    bat::BITMAP_BLOCK
                } else {
                    // Only the part of the last block inside the disk must exist.
                    let block = i as u64 - i as u64 / (geom.chunk_ratio + 1);
                    geom.block_size
                        .min(meta.virtual_size - block * geom.block_size)
                };
                if off < MIB || off.saturating_add(len) > file_len {
                    bad_entry(
                        lenient,
                        &mut problems,
                        e,
                        i,
                        &mut dirty_bat,
                        bat::BatError::BadOffset {
                            index: i as u64,
                            offset: off,
                        },
                    )?;
                    continue;
                }
                alloc_end = alloc_end.max(
                    off + if is_bitmap {
                        bat::BITMAP_BLOCK
                    } else {
                        geom.block_size
                    },
                );
            }
        }

        let mut parent_path = None;
        let parent = if meta.has_parent {
            match parent {
                ParentSource::Given(p) => Some(p),
                ParentSource::None => None,
                ParentSource::Resolve(dir) => {
                    let (p, path) = resolve_parent(meta.parent_locator.as_ref(), &dir)?;
                    parent_path = Some(path);
                    Some(Box::new(p))
                }
            }
        } else {
            None
        };
        if let Some(p) = &parent {
            if p.meta.logical_sector_size != meta.logical_sector_size {
                return Err(Error::InvalidOption(format!(
                    "parent's logical sector size {} differs from the child's {}",
                    p.meta.logical_sector_size, meta.logical_sector_size
                )));
            }
        }
        if hdr.log_guid.is_zero() {
            max_seq = 0;
        }
        let mut d = Disk {
            file,
            path: None,
            writable,
            header: hdr.clone(),
            header_slot: slot,
            regions,
            meta,
            geom,
            bat,
            dirty_bat,
            bitmaps: HashMap::new(),
            dirty_bitmap: BTreeSet::new(),
            parent,
            parent_path,
            log: LogState {
                seq: max_seq + 1,
                ..Default::default()
            },
            session_file: false,
            session_data: false,
            alloc_end,
            file_len,
            problems,
            replayed,
            unsynced: false,
            closed: false,
        };
        if writable && replayed > 0 {
            // The replayed log is applied and durable: retire it.
            hdr.log_guid = Guid::ZERO;
            hdr.file_write_guid = Guid::random();
            d.session_file = true;
            d.write_header(hdr)?;
        }
        Ok(d)
    }
}

fn bad_entry(
    lenient: bool,
    problems: &mut Vec<String>,
    e: &mut u64,
    i: usize,
    dirty: &mut BTreeSet<u64>,
    err: bat::BatError,
) -> Result<(), Error> {
    if !lenient {
        return Err(err.into());
    }
    problems.push(format!("{err}; cleared"));
    *e = 0;
    dirty.insert(i as u64 * 8 / SECTOR as u64);
    Ok(())
}

/// Candidate paths for a parent, from the locator, in the order to try.
pub fn parent_candidates(loc: &ParentLocator, dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let unix = |s: &str| s.replace('\\', "/");
    if let Some(r) = loc.get("relative_path") {
        let r = unix(r);
        let r = r.trim_start_matches("./");
        out.push(dir.join(r));
    }
    for key in ["absolute_win32_path", "volume_path"] {
        if let Some(a) = loc.get(key) {
            let a = unix(a);
            if a.starts_with('/') {
                out.push(PathBuf::from(&a));
            }
            // A Windows path: look for the same file name beside the child.
            if let Some(name) = a.rsplit('/').next().filter(|n| !n.is_empty()) {
                out.push(dir.join(name));
            }
        }
    }
    out.dedup();
    out
}

fn resolve_parent(loc: Option<&ParentLocator>, dir: &Path) -> Result<(Disk, PathBuf), Error> {
    let loc = loc.ok_or(Error::NoParent)?;
    let linkage: Vec<Guid> = ["parent_linkage", "parent_linkage2"]
        .iter()
        .filter_map(|k| loc.get(k).and_then(Guid::parse))
        .collect();
    if linkage.is_empty() {
        return Err(Error::InvalidOption(
            "parent locator has no valid parent_linkage".into(),
        ));
    }
    let mut tried = Vec::new();
    let mut mismatch = None;
    for path in parent_candidates(loc, dir) {
        if !path.is_file() {
            tried.push(path.display().to_string());
            continue;
        }
        let p = Disk::open(&path, false).map_err(|e| Error::Parent {
            path: path.clone(),
            source: Box::new(e),
        })?;
        if linkage.contains(&p.header.data_write_guid) {
            return Ok((p, path));
        }
        mismatch = Some(Error::ParentMismatch {
            path: path.clone(),
            found: p.header.data_write_guid,
            expected: linkage[0],
        });
    }
    Err(mismatch.unwrap_or(Error::ParentNotFound {
        tried: tried.join(", "),
    }))
}
