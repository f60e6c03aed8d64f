//! The benchmark's guest memory image: built once from files on this
//! machine, and kept resident in the page cache while both VMMs read it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::Res;

/// Builds the memory image from files on this machine.
pub fn build_image(path: &Path, size: u64) -> Res<Value> {
    if path.metadata().is_ok_and(|m| m.len() == size) {
        return Ok(json!({"image": path, "reused": true}));
    }
    const PIECE: usize = 256 << 10;
    let collect = |dirs: &[&str], want: &dyn Fn(&Path) -> bool, limit: usize| -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> = dirs.iter().map(PathBuf::from).collect();
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            entries.sort();
            for p in entries {
                let Ok(m) = std::fs::symlink_metadata(&p) else {
                    continue;
                };
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() && m.len() > 4096 && want(&p) {
                    out.push(p);
                    if out.len() >= limit {
                        return out;
                    }
                }
            }
        }
        out
    };
    let is_text = |p: &Path| {
        matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("txt" | "py" | "pm" | "pl" | "html" | "css" | "js" | "xml" | "h" | "c" | "md")
        ) || p.to_string_lossy().contains("common-licenses")
    };
    let text = collect(
        &["/usr/share", "/usr/lib/python3", "/usr/include"],
        &is_text,
        20000,
    );
    let bins = collect(
        &["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/sbin"],
        &|_| true,
        20000,
    );
    if text.is_empty() || bins.is_empty() {
        return Err("no text or binary files found to build the memory image".into());
    }
    // An endless reader over a list of files.
    struct Cycle {
        files: Vec<PathBuf>,
        i: usize,
        cur: Option<File>,
        bytes: u64,
    }
    impl Cycle {
        fn fill(&mut self, buf: &mut [u8]) {
            let mut at = 0;
            while at < buf.len() {
                if self.cur.is_none() {
                    self.cur = File::open(&self.files[self.i % self.files.len()]).ok();
                    self.i += 1;
                    continue;
                }
                match self.cur.as_mut().map(|f| f.read(&mut buf[at..])) {
                    Some(Ok(n)) if n > 0 => {
                        at += n;
                        self.bytes += n as u64;
                    }
                    _ => self.cur = None,
                }
            }
        }
    }
    let mut t = Cycle {
        files: text,
        i: 0,
        cur: None,
        bytes: 0,
    };
    let mut b = Cycle {
        files: bins,
        i: 0,
        cur: None,
        bytes: 0,
    };
    let mut rnd = File::open("/dev/urandom").map_err(|e| format!("/dev/urandom: {e}"))?;
    let tmp = path.with_extension("tmp");
    let mut out =
        std::io::BufWriter::new(File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?);
    let mut buf = vec![0u8; PIECE];
    let mut counts = [0u64; 4];
    for i in 0..(size as usize).div_ceil(PIECE) {
        let kind = i % 4;
        match kind {
            0 => buf.fill(0),
            1 => t.fill(&mut buf),
            2 => b.fill(&mut buf),
            _ => rnd.read_exact(&mut buf).map_err(|e| e.to_string())?,
        }
        counts[kind] += PIECE as u64;
        let n = PIECE.min(size as usize - i * PIECE);
        out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|e| e.to_string())?;
    Ok(json!({"image": path, "reused": false,
        "piece_bytes": PIECE, "zero_bytes": counts[0], "text_bytes": counts[1],
        "binary_bytes": counts[2], "random_bytes": counts[3],
        "text_files_read": t.i, "binary_files_read": b.i}))
}

/// A file mapped and locked in memory (its page cache stays resident)
/// until dropped.
pub struct PinnedFile {
    addr: *mut libc::c_void,
    len: usize,
}

impl PinnedFile {
    pub fn new(path: &Path) -> Res<PinnedFile> {
        use std::os::fd::AsRawFd;
        let f = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let len = f.metadata().map_err(|e| e.to_string())?.len() as usize;
        // SAFETY: a fresh read-only shared mapping of a file we opened;
        // nothing else refers to the address range.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                f.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(format!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: the range is our mapping.
        if unsafe { libc::mlock(addr, len) } != 0 {
            eprintln!(
                "tern: bench migrate: cannot lock the memory image in memory ({}); \
                 it may be read from disk during the runs",
                std::io::Error::last_os_error()
            );
        }
        Ok(PinnedFile { addr, len })
    }
}

impl Drop for PinnedFile {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}
