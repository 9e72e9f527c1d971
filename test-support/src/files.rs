//! Searching what a test left on disk: which files hold a byte string (a secret, a
//! recording's marker), and how many files a folder holds (so a search is known to have
//! looked at something).

use std::path::{Path, PathBuf};

/// Every file below `dir` whose bytes contain `needle` (unreadable entries are passed
/// over: a process may remove its files while the test looks).
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// How many files `dir` holds, at any depth (0 for a folder that does not exist).
pub fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path())
            } else {
                n += 1
            }
        }
    }
    n
}
