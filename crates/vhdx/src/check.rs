//! Checking a VHDX for damage and repairing what can be repaired.

use crate::bat;
use crate::disk::{parent_candidates, Disk, ParentSource};
use crate::guid::Guid;
use crate::header::{Header, HEADER_OFFSETS, HEADER_SIZE, MIB};
use crate::region::{RegionTable, REGION_TABLE_OFFSETS, REGION_TABLE_SIZE};
use crate::Error;
use std::path::Path;

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Data may be wrong or the file unusable by other tools.
    Error,
    /// Worth knowing (a dirty log, leaked space); the disk reads correctly.
    Warning,
}

/// One finding.
#[derive(Clone, Debug)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// What is wrong.
    pub message: String,
    /// Fixed by this run.
    pub repaired: bool,
}

/// The result of [`check`].
#[derive(Clone, Debug, Default)]
pub struct CheckReport {
    /// Everything found.
    pub problems: Vec<Problem>,
    /// Payload blocks stored in the file.
    pub allocated_blocks: u64,
    /// Bytes in the file not used by any structure or block.
    pub leaked_bytes: u64,
}

impl CheckReport {
    /// Errors still present (not repaired).
    pub fn errors(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.severity == Severity::Error && !p.repaired)
            .count()
    }
}

struct Findings {
    problems: Vec<Problem>,
    bad_entries: Vec<usize>,
    headers_bad: bool,
    regions_bad: bool,
    allocated_blocks: u64,
    leaked: u64,
}

fn examine(d: &mut Disk, dir: &Path) -> Result<Findings, Error> {
    let mut f = Findings {
        problems: Vec::new(),
        bad_entries: Vec::new(),
        headers_bad: false,
        regions_bad: false,
        allocated_blocks: 0,
        leaked: 0,
    };
    let mut err = |sev: Severity, m: String| {
        f.problems.push(Problem {
            severity: sev,
            message: m,
            repaired: false,
        })
    };
    for p in d.problems.clone() {
        err(Severity::Error, p);
    }
    if d.info().log_entries_replayed > 0 {
        err(
            Severity::Warning,
            format!(
                "log holds {} entries to replay (the file was not closed cleanly)",
                d.info().log_entries_replayed
            ),
        );
    }
    // Raw copies, to see which need rewriting.
    let mut hb = vec![0u8; HEADER_SIZE];
    for off in HEADER_OFFSETS {
        if d.file.read_at(&mut hb, off).is_err() || Header::parse(&hb).is_err() {
            f.headers_bad = true;
        }
    }
    let mut rb = vec![0u8; REGION_TABLE_SIZE];
    for off in REGION_TABLE_OFFSETS {
        match d
            .file
            .read_at(&mut rb, off)
            .ok()
            .and_then(|_| RegionTable::parse(&rb).ok())
        {
            Some(t) if t == d.regions => {}
            _ => f.regions_bad = true,
        }
    }
    // Every allocated block must lie in the data area and overlap nothing.
    let mut used: Vec<(u64, u64, Option<usize>)> = vec![(0, MIB, None)];
    used.push((d.header.log_offset, d.header.log_length as u64, None));
    for r in d.regions.all() {
        used.push((r.offset, r.length as u64, None));
    }
    let g = d.geom;
    for (i, &e) in d.bat.iter().enumerate() {
        let is_bitmap = g.is_bitmap_index(i as u64);
        let st = bat::state(e);
        let present = if is_bitmap {
            st == bat::BITMAP_PRESENT
        } else {
            matches!(
                st,
                bat::PAYLOAD_FULLY_PRESENT | bat::PAYLOAD_PARTIALLY_PRESENT
            )
        };
        if !present {
            continue;
        }
        if !is_bitmap {
            f.allocated_blocks += 1;
        }
        if st == bat::PAYLOAD_PARTIALLY_PRESENT && !is_bitmap {
            let block = i as u64 - i as u64 / (g.chunk_ratio + 1);
            let bi = g.bitmap_index(block / g.chunk_ratio);
            if bat::state(d.bat[bi]) != bat::BITMAP_PRESENT {
                err(
                    Severity::Error,
                    format!("block {block} is partially present but its sector bitmap is missing"),
                );
                f.bad_entries.push(i);
                continue;
            }
        }
        let len = if is_bitmap {
            bat::BITMAP_BLOCK
        } else {
            g.block_size
        };
        used.push((bat::offset(e), len, Some(i)));
    }
    used.sort();
    let mut end = 0u64;
    let mut last_owner: Option<Option<usize>> = None;
    for &(off, len, owner) in &used {
        if off < end {
            let what = |o: Option<usize>| {
                o.map_or("file structures".to_string(), |i| format!("BAT entry {i}"))
            };
            err(
                Severity::Error,
                format!(
                    "{} at {off} overlaps {}",
                    what(owner),
                    what(last_owner.flatten())
                ),
            );
            if let Some(i) = owner {
                f.bad_entries.push(i);
            }
            continue;
        }
        end = off + len;
        last_owner = Some(owner);
    }
    let covered: u64 = {
        let mut c = 0;
        let mut e = 0;
        for &(off, len, _) in &used {
            let s = off.max(e);
            let t = (off + len).min(d.file_len);
            if t > s {
                c += t - s;
            }
            e = e.max(off + len);
        }
        c
    };
    f.leaked = d.file_len.saturating_sub(covered);
    if f.leaked >= MIB {
        err(
            Severity::Warning,
            format!(
                "{} bytes of the file are used by nothing (leaked space)",
                f.leaked
            ),
        );
    }
    if d.meta.has_parent {
        let loc = d.meta.parent_locator.clone().unwrap_or_default();
        let want: Vec<Guid> = ["parent_linkage", "parent_linkage2"]
            .iter()
            .filter_map(|k| loc.get(k).and_then(Guid::parse))
            .collect();
        let found = parent_candidates(&loc, dir).into_iter().find_map(|p| {
            Disk::open(&p, false)
                .ok()
                .filter(|pd| want.contains(&pd.header().data_write_guid))
                .map(|_| p)
        });
        if found.is_none() {
            err(
                Severity::Error,
                "parent disk not found or does not match parent_linkage".into(),
            );
        }
    }
    if f.headers_bad {
        err(Severity::Error, "a header copy is invalid".into());
    }
    if f.regions_bad {
        err(
            Severity::Error,
            "a region table copy is invalid or differs".into(),
        );
    }
    Ok(f)
}

fn open(path: &Path, writable: bool) -> Result<Disk, Error> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(writable)
        .open(path)
        .map_err(|e| Error::Open {
            path: path.to_path_buf(),
            source: e,
        })?;
    let mut d = Disk::open_inner(Box::new(file), writable, ParentSource::None, true)?;
    d.path = Some(path.to_path_buf());
    Ok(d)
}

/// Checks the VHDX at `path`; with `repair`, replays its log, rewrites bad
/// header and region table copies and clears BAT entries that point at
/// nothing valid. Structures that cannot be parsed at all are an `Err`.
pub fn check(path: &Path, repair: bool) -> Result<CheckReport, Error> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut d = open(path, false)?;
    let f = examine(&mut d, &dir)?;
    drop(d);
    let mut report = CheckReport {
        problems: f.problems,
        allocated_blocks: f.allocated_blocks,
        leaked_bytes: f.leaked,
    };
    let needs = report
        .problems
        .iter()
        .any(|p| !p.message.contains("leaked") && !p.message.contains("parent"));
    if !repair || !needs {
        return Ok(report);
    }
    {
        let mut d = open(path, true)?; // replays the log in place
        d.begin_write(false)?;
        if f.headers_bad {
            let h = d.header.clone();
            d.write_header(h)?;
        }
        if f.regions_bad {
            let pages = d.region_pages(&d.regions.clone());
            d.log_commit(&pages, true)?;
        }
        for &i in &f.bad_entries {
            d.set_entry(i, 0);
        }
        d.flush()?;
        d.close()?;
    }
    let mut d = open(path, false)?;
    let after = examine(&mut d, &dir)?;
    let remaining: Vec<String> = after.problems.iter().map(|p| p.message.clone()).collect();
    for p in &mut report.problems {
        p.repaired = !remaining.contains(&p.message);
    }
    for p in after.problems {
        if !report.problems.iter().any(|q| q.message == p.message) {
            report.problems.push(p);
        }
    }
    report.allocated_blocks = after.allocated_blocks;
    report.leaked_bytes = after.leaked;
    Ok(report)
}
