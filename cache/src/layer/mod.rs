//! OCI layers: making them from a directory (or a list of changes) and applying them.
//!
//! # Why compress at build time
//!
//! The store keeps layers as *compressed* blobs, the way BuildKit's containerd store
//! does: the digest a registry sees is the digest of the compressed bytes, so it has
//! to be known when the image is committed, and pushing must not recompress (it
//! would be slow, and a different zlib would give a different digest). Export speed
//! therefore matters, and the writer is a pipeline: the calling thread walks the
//! tree and produces the tar stream in fixed 1 MiB chunks, hashing each chunk for
//! the `diff_id` as it goes; compression runs on worker threads; the calling thread
//! also writes the compressed chunks out in order, hashing them for the blob
//! `digest`. Each byte is read from disk once and hashed once in each form.
//!
//! # Determinism
//!
//! The tar stream depends only on the tree: entries in byte order of their tar names
//! (directories carry a trailing `/`, so a directory comes right before its
//! contents and the order is what a depth-first walk with sorted children gives),
//! numeric uid/gid without user or group names, modes as on disk, mtimes clamped to
//! `SOURCE_DATE_EPOCH` (0 unless set), ustar headers with a PAX extended header only
//! when needed (long names, large ids or sizes, xattrs), records in a fixed order.
//! Hardlinks are detected by `(dev, inode)`; the first path in the order is the file,
//! later ones are tar hardlink entries to it. Sockets are skipped (tar cannot hold
//! them). The xattr `security.selinux` is not exported (it is a label of the build
//! host's policy, and would make digests differ between hosts); overlayfs's own
//! `trusted.overlay.*` / `user.overlay.*` xattrs are not exported either.
//!
//! Overlay upper directories are converted as they are read: a character device
//! `0:0` is an overlay whiteout and becomes an empty regular file `.wh.NAME`; a
//! directory with `trusted.overlay.opaque=y` or `user.overlay.opaque=y` gets a
//! `.wh..wh..opq` entry. (Device `0:0` is never a real device, so this is done
//! for every tree.)
//!
//! ## Parallel gzip whose bytes do not depend on the thread count
//!
//! Like pigz, the uncompressed stream is cut into chunks of a FIXED size
//! ([`GZIP_CHUNK`], 1 MiB — never derived from the number of threads). Each chunk is
//! raw-deflated on its own, primed with the previous 32 KiB of *input* as a preset
//! dictionary (so compression ratio barely suffers), and ended with a sync flush
//! (which byte-aligns the output and does not set the final-block bit); the last
//! chunk is finished normally. The raw deflate pieces concatenate into one valid
//! deflate stream, wrapped in a single gzip member with a fixed header (mtime 0,
//! OS 255) and a trailer whose CRC-32 is combined from per-chunk CRCs. Every chunk's
//! compressed bytes are a function of its own input and the 32 KiB before it only,
//! so any number of threads produces the same bytes, and so the same digest.
//!
//! zstd: libzstd's multithreaded mode (`nbWorkers >= 1`) produces the same frame for
//! any number of workers (jobs are cut by size, not by worker), but single-threaded
//! mode (`nbWorkers = 0`) produces a different one. The writer therefore always uses
//! `nbWorkers = max(threads, 1)`; the tests check 1, 2 and 8 give identical bytes.
//!
//! # Applying layers: the safety model
//!
//! [`apply_layer`] treats the tarball as hostile. Every entry name is checked: absolute
//! names and `..` components are refused (`./` prefixes are accepted). The parent
//! directories of an entry are resolved one component at a time inside the root:
//! a symlink met on the way is followed only if it is relative and stays inside the
//! root; an absolute symlink, or one whose `..` would climb above the root, makes
//! the entry refused. A whiteout of `.` or `..` (`.wh..`, `.wh...`) is refused.
//! The last component is never followed: an existing symlink
//! there is replaced, and regular files are opened with `O_NOFOLLOW`. Hardlink
//! targets are resolved the same way and must be an existing non-directory inside
//! the root. Every refusal is an error naming the entry. Decompression bombs are
//! bounded by [`ApplyLimits`]: total uncompressed bytes, number of entries and the
//! ratio of uncompressed to compressed bytes; a file whose declared size exceeds
//! the remaining budget is refused before anything is written. (The model assumes no
//! other process is changing the root while a layer is being applied.)
//!
//! Whiteouts follow the OCI spec: `.wh.NAME` deletes `NAME` from lower layers, and
//! `.wh..wh..opq` removes every lower entry of its directory; neither touches what
//! the same layer wrote, whatever the order of entries in the tar (a directory
//! both deleted and written to by one layer keeps only this layer's content).
//! overlayfs's own xattrs (`trusted.overlay.*`, `user.overlay.*`) in a tar are
//! never restored: they would change what an overlay mount of the tree shows.
//!
//! ## Overlay-native extraction
//!
//! [`extract_layer`] with [`WhiteoutMode::Overlay`] extracts one layer on its own
//! into an empty directory in overlayfs's lower-dir form (docker's overlay2
//! `diff` directories; see [`crate::snapshot`]): `.wh.NAME` becomes a character
//! device `0:0` named `NAME` (an overlay whiteout), and `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` (or `user.overlay.opaque=y`, [`OverlayXattrs`]) on
//! its directory. Names, symlinks, hardlinks and limits are checked exactly as
//! for [`apply_layer`] (it is the same code). The overlay mount of such
//! directories shows what applying the same layers in order shows, with these
//! consequences of a layer being extracted without its lower layers:
//!
//! - A whiteout and an entry of the same name in one layer (deleted, then made
//!   again) become that entry; if it is a directory, it is made opaque so the
//!   lower layers' content stays hidden. A whiteout or opaque marker whose
//!   directory the tar does not list gets it created (mode 0755, owned by the
//!   caller), as for any entry whose parents are missing; in the overlay it then
//!   masks the lower directory's owner and mode (docker's overlay2 does the same;
//!   the layer writer always lists parents).
//! - Symlinks in an entry's path are followed only if the same layer made them:
//!   an entry under `lib/` where a lower layer made `lib` a symlink becomes a
//!   real `lib/` directory that hides the symlink. Layers made by forge, docker
//!   and BuildKit never have such entries.
//! - A character device `0:0` in the tar is a whiteout in overlay form (it is
//!   one to overlayfs); the layer writer never makes such entries.
//! - overlayfs ignores the opaque xattr on a layer's root directory, so a
//!   `.wh..wh..opq` at the top of a layer does not hide the lower layers.

mod apply;
mod compress;
mod detect;
mod owners;
mod tarfmt;
mod write;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub use apply::{
    apply_layer, extract_layer, ApplyLimits, ApplyStats, ExtractOptions, OverlayXattrs,
    WhiteoutMode,
};
pub use compress::GZIP_CHUNK;
pub use detect::{decompress, detect, DetectedCompression};
pub use owners::{fully_privileged, Owners, OWNER_XATTR};

use crate::Sha256Digest;

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// A plain tar (`application/vnd.oci.image.layer.v1.tar`).
    None,
    /// gzip, compressed in parallel chunks (`...tar+gzip`).
    #[default]
    Gzip,
    /// zstd (`...tar+zstd`).
    Zstd,
}

impl Compression {
    /// The OCI media type of a layer compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// The level used when none is given: 6 for gzip, 3 for zstd.
    pub fn default_level(self) -> i32 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 6,
            Compression::Zstd => 3,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = LayerError;

    /// `none`/`uncompressed`, `gzip`, `zstd` (as in `--compression zstd`).
    fn from_str(s: &str) -> Result<Self, LayerError> {
        match s {
            "none" | "uncompressed" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            other => Err(LayerError::UnknownCompression {
                name: other.to_string(),
            }),
        }
    }
}

/// How to write a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerOptions {
    /// The compression of the blob.
    pub compression: Compression,
    /// The compression level; `None` means [`Compression::default_level`].
    pub level: Option<i32>,
    /// Compression threads; 0 means all available cores. Never changes the output.
    pub threads: usize,
    /// Timestamps later than this (seconds since the epoch) are clamped to it.
    pub source_date_epoch: u64,
    /// How the owners of the files read become the layer's owners.
    pub owners: Owners,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Gzip,
            level: None,
            threads: 0,
            source_date_epoch: 0,
            owners: Owners::of_this_process(),
        }
    }
}

impl LayerOptions {
    /// The defaults, with `source_date_epoch` taken from the `SOURCE_DATE_EPOCH`
    /// environment variable when it is set to a number.
    pub fn from_env() -> Self {
        let source_date_epoch = std::env::var("SOURCE_DATE_EPOCH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Self {
            source_date_epoch,
            ..Self::default()
        }
    }

    pub(crate) fn effective_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerInfo {
    /// sha256 of the blob as written (compressed).
    pub digest: Sha256Digest,
    /// sha256 of the uncompressed tar stream (the OCI `diff_id`).
    pub diff_id: Sha256Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// Size of the uncompressed tar stream in bytes.
    pub uncompressed_size: u64,
    /// Number of tar entries written (0 when the stream was copied from an
    /// existing tar by [`compress_tar`]).
    pub entries: u64,
    /// The OCI media type of the blob.
    pub media_type: &'static str,
}

/// One change of a change layer, as a path relative to the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    /// The path was added or modified: its current state on disk goes in the layer
    /// (only the path itself, not what is under it if it is a directory; its parent
    /// directories are added too).
    Upsert(PathBuf),
    /// The path was deleted: a whiteout `.wh.NAME` goes in the layer.
    Delete(PathBuf),
    /// The directory's earlier content is replaced: the directory and a
    /// `.wh..wh..opq` entry in it go in the layer (list its new children as `Upsert`).
    Opaque(PathBuf),
}

/// Errors of writing, compressing and applying layers.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LayerError {
    /// Reading a file or directory of the tree failed.
    #[error("cannot read `{path}` for the layer: {source}")]
    #[diagnostic(
        code(cache::layer::read),
        help("check the file exists and is readable by forge")
    )]
    Read {
        /// The path on disk.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file changed size while it was being archived.
    #[error("`{path}` changed while it was being archived (expected {expected} bytes)")]
    #[diagnostic(
        code(cache::layer::file_changed),
        help("nothing may write to the tree while a layer is made from it")
    )]
    FileChanged {
        /// The path on disk.
        path: PathBuf,
        /// The size seen when the header was written.
        expected: u64,
    },
    /// A change list names a path that cannot be in a layer.
    #[error("invalid change `{path}`: {reason}")]
    #[diagnostic(
        code(cache::layer::invalid_change),
        help("changes are paths relative to the root, without `..`, that exist (or, for deletions, whose parent exists)")
    )]
    InvalidChange {
        /// The path as given.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// Writing the blob out failed.
    #[error("cannot write the layer blob: {0}")]
    #[diagnostic(
        code(cache::layer::write),
        help("check free space and permissions of the destination")
    )]
    Write(#[source] std::io::Error),
    /// Reading the input stream (tarball) failed.
    #[error("cannot read the layer stream: {0}")]
    #[diagnostic(
        code(cache::layer::input),
        help("the stream may be truncated or not a (compressed) tar")
    )]
    Input(#[source] std::io::Error),
    /// The compressor failed.
    #[error("{algorithm} compression failed: {message}")]
    #[diagnostic(
        code(cache::layer::compress),
        help("this is a bug in forge or the compression library; please report it")
    )]
    Compress {
        /// gzip or zstd.
        algorithm: &'static str,
        /// What the library said.
        message: String,
    },
    /// The compression level is out of range.
    #[error("compression level {level} is not valid for {algorithm}")]
    #[diagnostic(
        code(cache::layer::level),
        help("gzip levels are 0-9 (default 6); zstd levels are 1-22 (default 3)")
    )]
    InvalidLevel {
        /// gzip or zstd.
        algorithm: &'static str,
        /// What was given.
        level: i32,
    },
    /// `--compression` named something unknown.
    #[error("unknown compression `{name}`")]
    #[diagnostic(
        code(cache::layer::unknown_compression),
        help("use one of: gzip, zstd, none")
    )]
    UnknownCompression {
        /// What was given.
        name: String,
    },
    /// A decompressor program (`bzip2`, `xz`) is not installed.
    #[error("cannot decompress {format}: `{program}` could not be run: {source}")]
    #[diagnostic(
        code(cache::layer::decompressor_missing),
        help("install the `{program}` command (Debian package `{package}`), or recompress the tarball as gzip or zstd")
    )]
    DecompressorMissing {
        /// bzip2 or xz.
        format: &'static str,
        /// The command run.
        program: &'static str,
        /// The Debian package holding it.
        package: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A tar entry is refused by the safety rules of [`apply_layer`].
    #[error("refusing layer entry `{entry}`: {reason}")]
    #[diagnostic(
        code(cache::layer::unsafe_entry),
        help("the layer tries to write outside the root directory; it is corrupt or malicious")
    )]
    UnsafeEntry {
        /// The entry name as in the tar.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A tar entry could not be applied.
    #[error("cannot apply layer entry `{entry}`: {source}")]
    #[diagnostic(
        code(cache::layer::apply),
        help("check free space and permissions under the root (device nodes and ownership need root)")
    )]
    Apply {
        /// The entry name as in the tar.
        entry: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A tar entry is malformed or of an unsupported kind.
    #[error("invalid layer entry `{entry}`: {reason}")]
    #[diagnostic(
        code(cache::layer::invalid_entry),
        help("the layer is corrupt or was made by a tool forge does not understand")
    )]
    InvalidEntry {
        /// The entry name as in the tar.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A decompression-bomb limit was hit.
    #[error("layer exceeds the {limit} limit at entry `{entry}` ({value} > {max})")]
    #[diagnostic(
        code(cache::layer::limit),
        help("the layer is too large or compresses implausibly well (a decompression bomb?); raise ApplyLimits if it is legitimate")
    )]
    LimitExceeded {
        /// Which limit: total bytes, entries or compression ratio.
        limit: &'static str,
        /// The entry being applied.
        entry: String,
        /// The value reached.
        value: u64,
        /// The limit.
        max: u64,
    },
}

/// Write the whole tree under `root` (not the root directory entry itself) as a
/// layer blob to `out`: a base layer, or an import of a directory.
pub fn write_dir_layer(
    root: &Path,
    opts: &LayerOptions,
    out: &mut dyn Write,
) -> Result<LayerInfo, LayerError> {
    compress::run(opts, out, |tw| write::write_tree(root, opts, tw))
}

/// Write a list of changes under `root` as a layer blob to `out`: upserted paths as
/// they are on disk now (with their parent directories), deletions as whiteouts,
/// opaque directories with a `.wh..wh..opq` entry.
pub fn write_changes_layer(
    root: &Path,
    changes: &[Change],
    opts: &LayerOptions,
    out: &mut dyn Write,
) -> Result<LayerInfo, LayerError> {
    let items = write::plan_changes(opts.owners, root, changes)?;
    compress::run(opts, out, |tw| write::write_items(items, opts, tw))
}

/// What a [`PlannedEntry`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlannedKind {
    /// A directory (its entries are planned separately).
    Dir,
    /// A regular file whose bytes are read from `path` (opened without
    /// following a symlink; it must still be `size` bytes long). Entries with
    /// the same `link_key` (a source's `(dev, inode)`) after the first in tar
    /// order become hard links to it.
    File {
        /// Where the bytes are.
        path: PathBuf,
        /// How many.
        size: u64,
        /// Hard-link identity, if the source has more than one link.
        link_key: Option<(u64, u64)>,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, as written.
        target: PathBuf,
    },
    /// A character device.
    CharDevice {
        /// `st_rdev`.
        rdev: u64,
    },
    /// A block device.
    BlockDevice {
        /// `st_rdev`.
        rdev: u64,
    },
    /// A named pipe.
    Fifo,
}

impl PlannedKind {
    /// What `path`, lstat'ed as `meta`, is as a planned entry (a regular
    /// file is read from `path`; a multiply-linked one gets its hard-link
    /// key); `None` for a socket, which layers leave out.
    pub fn of(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<Option<Self>> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let ft = meta.file_type();
        Ok(Some(if ft.is_dir() {
            PlannedKind::Dir
        } else if ft.is_file() {
            PlannedKind::File {
                path: path.to_path_buf(),
                size: meta.len(),
                link_key: (meta.nlink() > 1).then_some((meta.dev(), meta.ino())),
            }
        } else if ft.is_symlink() {
            PlannedKind::Symlink {
                target: std::fs::read_link(path)?,
            }
        } else if ft.is_char_device() {
            PlannedKind::CharDevice { rdev: meta.rdev() }
        } else if ft.is_block_device() {
            PlannedKind::BlockDevice { rdev: meta.rdev() }
        } else if ft.is_fifo() {
            PlannedKind::Fifo
        } else {
            return Ok(None);
        }))
    }
}

/// One entry of a layer written from a plan ([`write_planned_layer`]) rather
/// than from a directory: its metadata is given, not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEntry {
    /// What it is.
    pub kind: PlannedKind,
    /// Permission bits (with setuid, setgid and sticky).
    pub mode: u32,
    /// Owner (the image's: see [`Owners::image_owner`] for a file on disk).
    pub uid: u32,
    /// Group (the image's).
    pub gid: u32,
    /// Modification time in seconds (clamped to `SOURCE_DATE_EPOCH` as
    /// every entry is).
    pub mtime: i64,
    /// Where its extended attributes are read (filtered as for a directory
    /// layer); `None`: it has none.
    pub xattrs_from: Option<PathBuf>,
}

/// Write planned entries, keyed by their tar names (directories end in `/`;
/// the map's byte order is the tar order), as a layer blob to `out`. The
/// names are taken as given: the caller keeps them relative and clean.
pub fn write_planned_layer(
    entries: BTreeMap<Vec<u8>, PlannedEntry>,
    opts: &LayerOptions,
    out: &mut dyn Write,
) -> Result<LayerInfo, LayerError> {
    let items = entries
        .into_iter()
        .map(|(name, entry)| (name, write::Item::Planned(entry)))
        .collect();
    compress::run(opts, out, |tw| write::write_items(items, opts, tw))
}

/// Compress an existing uncompressed tar stream (`forge import` of a plain tarball),
/// computing the blob digest and the diff_id in the same pass. The same tar bytes
/// give the same blob as [`write_dir_layer`] would.
pub fn compress_tar(
    input: &mut dyn Read,
    opts: &LayerOptions,
    out: &mut dyn Write,
) -> Result<LayerInfo, LayerError> {
    compress::run(opts, out, |tw| tw.copy_all(input))
}
