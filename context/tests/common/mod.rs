//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use filetime::FileTime;

/// Writes `text` at `root/path`, creating parents.
pub fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).expect("mkdir");
    }
    fs::write(p, text).expect("write");
}

/// Sets `path`'s mtime (not following symlinks).
pub fn set_mtime(path: &Path, t: SystemTime) {
    filetime::set_symlink_file_times(path, FileTime::from(t), FileTime::from(t)).expect("utimes");
}

/// Moves every entry's mtime an hour back, so no cache entry is racily clean.
pub fn age(root: &Path) {
    let old = SystemTime::now() - Duration::from_secs(3600);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("readdir") {
            let p = e.expect("entry").path();
            if p.symlink_metadata().expect("lstat").is_dir() {
                stack.push(p.clone());
            }
            set_mtime(&p, old);
        }
    }
}

/// The paths of an index.
pub fn paths(index: &forge_context::Index) -> Vec<&str> {
    index.entries.iter().map(|e| e.path.as_str()).collect()
}
