//! What every fuzz target shares: a seed corpus made from the seeds the
//! fuzzed crate provides.

/// When the corpus directory libFuzzer was given (its first argument that
/// is not a `-flag`) is empty, fills it with `seeds`, so a first run starts
/// from valid inputs rather than from nothing.
pub fn seed_corpus(seeds: impl FnOnce() -> Vec<Vec<u8>>) {
    let Some(dir) = std::env::args().skip(1).find(|a| !a.starts_with('-')) else {
        return;
    };
    let dir = std::path::Path::new(&dir);
    let empty = std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
    if !empty {
        return;
    }
    for (i, s) in seeds().iter().enumerate() {
        if let Err(e) = std::fs::write(dir.join(format!("seed-{i}")), s) {
            eprintln!("cannot write seed {i} into {}: {e}", dir.display());
        }
    }
}
