//! Writing and reading blobs: temp file, fsync, verify, rename, directory fsync;
//! reads verify the digest.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::lease::temp_name;
use super::{io_err, sync_dir};
use crate::{CacheError, Sha256Digest};

/// The sha256 of some bytes.
pub fn sha256(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest::from_bytes(Sha256::digest(bytes).into())
}

/// A blob being written: a temp file under `forge/v1/tmp`, hashed as it is
/// written. [`BlobWriter::commit`] puts it into `blobs/sha256/`; dropping it
/// uncommitted removes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    temp: PathBuf,
    blobs_dir: PathBuf,
    hasher: Sha256,
    size: u64,
    committed: bool,
}

impl BlobWriter {
    pub(crate) fn create(tmp_dir: &Path, blobs_dir: &Path) -> Result<BlobWriter, CacheError> {
        let temp = tmp_dir.join(temp_name("blob"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(io_err("create", &temp))?;
        Ok(BlobWriter {
            file,
            temp,
            blobs_dir: blobs_dir.to_path_buf(),
            hasher: Sha256::new(),
            size: 0,
            committed: false,
        })
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Drops everything written so far (a download that starts over).
    pub fn restart(&mut self) -> Result<(), CacheError> {
        use std::io::Seek;
        self.file
            .set_len(0)
            .map_err(io_err("truncate", &self.temp))?;
        self.file
            .seek(io::SeekFrom::Start(0))
            .map_err(io_err("seek", &self.temp))?;
        self.hasher = Sha256::new();
        self.size = 0;
        Ok(())
    }

    /// The sha256 of what was written so far (what [`BlobWriter::commit`]
    /// would check).
    pub fn digest_so_far(&self) -> Sha256Digest {
        Sha256Digest::from_bytes(self.hasher.clone().finalize().into())
    }

    /// Finishes the blob: fsyncs the data, checks it against `expected` (if
    /// given; on mismatch the temp file is removed and nothing is stored),
    /// renames it to `blobs/sha256/<hex>` (replacing any copy there, which heals
    /// a corrupted one) and fsyncs the directory. Returns digest and size.
    pub fn commit(
        mut self,
        expected: Option<&Sha256Digest>,
    ) -> Result<(Sha256Digest, u64), CacheError> {
        self.file.flush().map_err(io_err("write", &self.temp))?;
        self.file.sync_all().map_err(io_err("fsync", &self.temp))?;
        let actual = Sha256Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(CacheError::DigestMismatch {
                    digest: *expected,
                    actual,
                });
            }
        }
        let dest = self.blobs_dir.join(actual.hex());
        fs::rename(&self.temp, &dest).map_err(io_err("rename into place", &dest))?;
        self.committed = true;
        sync_dir(&self.blobs_dir)?;
        Ok((actual, self.size))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// A blob opened for reading. Hashes what is read; at end of file it fails with
/// an [`io::ErrorKind::InvalidData`] error wrapping
/// [`CacheError::DigestMismatch`] if the content does not match the digest.
/// Consumers must read to the end (and see `Ok(0)`) to have verified content.
#[derive(Debug)]
pub struct VerifyingReader {
    file: File,
    digest: Sha256Digest,
    hasher: Sha256,
    size: u64,
    state: ReadState,
}

#[derive(Debug, PartialEq, Eq)]
enum ReadState {
    Reading,
    Verified,
    Failed(Sha256Digest),
}

impl VerifyingReader {
    pub(crate) fn new(file: File, digest: Sha256Digest) -> Self {
        Self {
            file,
            digest,
            hasher: Sha256::new(),
            size: 0,
            state: ReadState::Reading,
        }
    }

    /// The digest the content must have.
    pub fn digest(&self) -> &Sha256Digest {
        &self.digest
    }

    /// Bytes read so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn mismatch(&self, actual: Sha256Digest) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            CacheError::DigestMismatch {
                digest: self.digest,
                actual,
            },
        )
    }
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.state {
            ReadState::Verified => return Ok(0),
            ReadState::Failed(actual) => return Err(self.mismatch(actual)),
            ReadState::Reading => {}
        }
        let n = self.file.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let actual = Sha256Digest::from_bytes(std::mem::take(&mut self.hasher).finalize().into());
        if actual == self.digest {
            self.state = ReadState::Verified;
            Ok(0)
        } else {
            self.state = ReadState::Failed(actual);
            Err(self.mismatch(actual))
        }
    }
}

/// Hashes a file; `Ok(None)` if it does not exist.
pub(crate) fn hash_file(path: &Path) -> Result<Option<(Sha256Digest, u64)>, CacheError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(Some((
        Sha256Digest::from_bytes(hasher.finalize().into()),
        size,
    )))
}
