//! The export pipeline: tar bytes in fixed chunks → (parallel) compression → out,
//! with the diff_id hashed on the way in and the blob digest on the way out.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};

use flate2::{Compress, FlushCompress, Status};
use sha2::{Digest, Sha256};

use super::{Compression, LayerError, LayerInfo, LayerOptions};
use crate::Sha256Digest;

/// Bytes of uncompressed input per independently compressed gzip chunk. Fixed: the
/// compressed bytes depend on it, so it must never depend on the thread count.
pub const GZIP_CHUNK: usize = 1 << 20;

/// The preset dictionary of each gzip chunk: the last 32 KiB of input before it.
const DICT: usize = 32 * 1024;

/// A consumer of the uncompressed stream, in chunks of [`GZIP_CHUNK`] bytes (the
/// last one shorter, possibly empty).
trait Backend {
    fn push(&mut self, chunk: Vec<u8>, last: bool) -> Result<(), LayerError>;
    /// The blob's size and sha256, once the last chunk was pushed.
    fn finish(&mut self) -> Result<(u64, [u8; 32]), LayerError>;
    /// A used chunk buffer to fill again, if one is free.
    fn spare(&mut self) -> Option<Vec<u8>>;
}

/// Where the tar writer puts its bytes: fills chunks, hashes them (diff_id) and
/// hands them to the compressor.
pub(crate) struct TarSink<'b> {
    buf: Vec<u8>,
    filled: usize,
    /// The diff_id's hasher; `None` when the backend hashes the stream.
    diff: Option<Sha256>,
    total: u64,
    entries: u64,
    backend: &'b mut dyn Backend,
}

impl<'b> TarSink<'b> {
    fn new(backend: &'b mut dyn Backend, hash: bool) -> Self {
        Self {
            buf: vec![0; GZIP_CHUNK],
            filled: 0,
            diff: hash.then(Sha256::new),
            total: 0,
            entries: 0,
            backend,
        }
    }

    fn chunk_full(&mut self) -> Result<(), LayerError> {
        let fresh = self.backend.spare().unwrap_or_else(|| vec![0; GZIP_CHUNK]);
        let chunk = std::mem::replace(&mut self.buf, fresh);
        self.filled = 0;
        if let Some(diff) = self.diff.as_mut() {
            diff.update(&chunk);
        }
        self.backend.push(chunk, false)
    }

    fn advance(&mut self, n: usize) -> Result<(), LayerError> {
        self.filled += n;
        self.total += n as u64;
        if self.filled == GZIP_CHUNK {
            self.chunk_full()?;
        }
        Ok(())
    }

    /// Counts one tar entry (called once per header written).
    pub(crate) fn count_entry(&mut self) {
        self.entries += 1;
    }

    /// Append bytes.
    pub(crate) fn write(&mut self, mut data: &[u8]) -> Result<(), LayerError> {
        while !data.is_empty() {
            let n = (GZIP_CHUNK - self.filled).min(data.len());
            self.buf[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            self.advance(n)?;
        }
        Ok(())
    }

    /// Append zero bytes.
    pub(crate) fn zeros(&mut self, mut n: usize) -> Result<(), LayerError> {
        while n > 0 {
            let k = (GZIP_CHUNK - self.filled).min(n);
            self.buf[self.filled..self.filled + k].fill(0);
            n -= k;
            self.advance(k)?;
        }
        Ok(())
    }

    /// Append exactly `size` bytes read from a file, reading straight into the chunk.
    pub(crate) fn copy_file(
        &mut self,
        r: &mut dyn Read,
        size: u64,
        path: &Path,
    ) -> Result<(), LayerError> {
        let mut left = size;
        while left > 0 {
            let want = ((GZIP_CHUNK - self.filled) as u64).min(left) as usize;
            let n = match r.read(&mut self.buf[self.filled..self.filled + want]) {
                Ok(0) => {
                    return Err(LayerError::FileChanged {
                        path: path.to_path_buf(),
                        expected: size,
                    })
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(LayerError::Read {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            };
            left -= n as u64;
            self.advance(n)?;
        }
        Ok(())
    }

    /// Append everything `r` gives until end of stream.
    pub(crate) fn copy_all(&mut self, r: &mut dyn Read) -> Result<(), LayerError> {
        loop {
            let n = match r.read(&mut self.buf[self.filled..]) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LayerError::Input(e)),
            };
            self.advance(n)?;
        }
    }

    fn finish(mut self) -> Result<([u8; 32], u64, u64), LayerError> {
        let mut last = std::mem::take(&mut self.buf);
        last.truncate(self.filled);
        let diff = self.diff.take().map(|mut diff| {
            diff.update(&last);
            diff.finalize().into()
        });
        self.backend.push(last, true)?;
        Ok((diff.unwrap_or([0; 32]), self.total, self.entries))
    }
}

/// Writes to `out`, counting and (unless made with [`HashingWriter::counting`])
/// hashing.
struct HashingWriter<'o> {
    out: &'o mut dyn Write,
    hasher: Option<Sha256>,
    count: u64,
}

impl<'o> HashingWriter<'o> {
    fn new(out: &'o mut dyn Write) -> Self {
        Self {
            out,
            hasher: Some(Sha256::new()),
            count: 0,
        }
    }

    /// Counts without hashing: for an uncompressed blob, whose digest is the
    /// tar stream's, already hashed as the diff_id.
    fn counting(out: &'o mut dyn Write) -> Self {
        Self {
            out,
            hasher: None,
            count: 0,
        }
    }

    /// The byte count and the sha256 (zeros when only counting).
    fn finish(&mut self) -> Result<(u64, [u8; 32]), LayerError> {
        self.out.flush().map_err(LayerError::Write)?;
        let digest = self
            .hasher
            .take()
            .map_or([0u8; 32], |hasher| hasher.finalize().into());
        Ok((self.count, digest))
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)?;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(buf);
        }
        self.count += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Run `produce` (which writes a tar stream into the sink) through the compression
/// chosen in `opts`, writing the blob to `out`.
pub(crate) fn run<F>(
    opts: &LayerOptions,
    out: &mut dyn Write,
    produce: F,
) -> Result<LayerInfo, LayerError>
where
    F: FnOnce(&mut TarSink<'_>) -> Result<(), LayerError>,
{
    let level = opts.level.unwrap_or(opts.compression.default_level());
    let threads = opts.effective_threads();
    let media_type = opts.compression.media_type();
    let (size, digest, diff_id, uncompressed_size, entries) =
        match opts.compression {
            Compression::None => std::thread::scope(|scope| {
                // The blob is the tar stream: one sha256, on another core while
                // the next chunk is read and written.
                let (chunks, hashed) = sync_channel::<Arc<Vec<u8>>>(4);
                let hasher = scope.spawn(move || {
                    let mut digest = Sha256::new();
                    for chunk in hashed {
                        digest.update(&chunk[..]);
                    }
                    <[u8; 32]>::from(digest.finalize())
                });
                let mut backend = PlainBackend {
                    out: HashingWriter::counting(out),
                    chunks: Some(chunks),
                    hasher: Some(hasher),
                    in_flight: std::collections::VecDeque::new(),
                };
                let (size, digest, _, total, entries) = drive(&mut backend, produce, false)?;
                Ok::<_, LayerError>((size, digest, digest, total, entries))
            })?,
            Compression::Gzip => {
                let level = u32::try_from(level).ok().filter(|l| *l <= 9).ok_or(
                    LayerError::InvalidLevel {
                        algorithm: "gzip",
                        level,
                    },
                )?;
                std::thread::scope(|scope| {
                    let (job_tx, job_rx) = sync_channel::<Job>(threads * 2);
                    let job_rx = Arc::new(Mutex::new(job_rx));
                    let (done_tx, done_rx) = channel::<Done>();
                    for _ in 0..threads {
                        let job_rx = Arc::clone(&job_rx);
                        let done_tx = done_tx.clone();
                        scope.spawn(move || gzip_worker(&job_rx, &done_tx, level));
                    }
                    drop(done_tx);
                    let mut backend = GzipBackend {
                        jobs: Some(job_tx),
                        done: done_rx,
                        pending: BTreeMap::new(),
                        submitted: 0,
                        written: 0,
                        tail: Vec::with_capacity(DICT),
                        crc: crc32fast::Hasher::new(),
                        input_len: 0,
                        out: HashingWriter::new(out),
                        spare: Vec::new(),
                    };
                    // On error the backend is dropped here, closing the job queue, so the
                    // workers stop and the scope can end.
                    drive(&mut backend, produce, true)
                })?
            }
            Compression::Zstd => {
                if !(1..=22).contains(&level) {
                    return Err(LayerError::InvalidLevel {
                        algorithm: "zstd",
                        level,
                    });
                }
                let zerr = |e: io::Error| LayerError::Compress {
                    algorithm: "zstd",
                    message: e.to_string(),
                };
                let mut encoder = zstd::stream::write::Encoder::new(HashingWriter::new(out), level)
                    .map_err(zerr)?;
                // nbWorkers >= 1 always: its output does not depend on the worker count,
                // while single-threaded mode (0) would give different bytes.
                let workers = u32::try_from(threads.max(1)).unwrap_or(u32::MAX);
                encoder.multithread(workers).map_err(zerr)?;
                encoder.include_checksum(true).map_err(zerr)?;
                // No overlap between jobs: ~20% faster on 2 cores for ~0.2% larger
                // blobs; fixed, so still independent of the worker count.
                encoder
                    .set_parameter(zstd::stream::raw::CParameter::OverlapSizeLog(1))
                    .map_err(zerr)?;
                let mut backend = ZstdBackend {
                    encoder: Some(encoder),
                    spare: None,
                };
                drive(&mut backend, produce, true)?
            }
        };
    Ok(LayerInfo {
        digest: Sha256Digest::from_bytes(digest),
        diff_id: Sha256Digest::from_bytes(diff_id),
        size,
        uncompressed_size,
        entries,
        media_type,
    })
}

/// `(blob size, blob sha256, diff_id, tar bytes, tar entries)`.
type Driven = (u64, [u8; 32], [u8; 32], u64, u64);

/// `hash`: whether the sink hashes the diff_id (`false`: the backend's
/// digest is the diff_id, and the third value is zeros).
fn drive<F>(backend: &mut dyn Backend, produce: F, hash: bool) -> Result<Driven, LayerError>
where
    F: FnOnce(&mut TarSink<'_>) -> Result<(), LayerError>,
{
    let mut sink = TarSink::new(backend, hash);
    produce(&mut sink)?;
    let (diff_id, total, entries) = sink.finish()?;
    let (size, digest) = backend.finish()?;
    Ok((size, digest, diff_id, total, entries))
}

/// The uncompressed blob: chunks written as they come and hashed by a
/// thread of their own.
struct PlainBackend<'o, 's> {
    out: HashingWriter<'o>,
    /// To the hasher; closed by `finish`.
    chunks: Option<SyncSender<Arc<Vec<u8>>>>,
    hasher: Option<std::thread::ScopedJoinHandle<'s, [u8; 32]>>,
    /// Chunks the hasher may still read, oldest first.
    in_flight: std::collections::VecDeque<Arc<Vec<u8>>>,
}

impl Backend for PlainBackend<'_, '_> {
    fn push(&mut self, chunk: Vec<u8>, _last: bool) -> Result<(), LayerError> {
        let chunk = Arc::new(chunk);
        let hasher_gone = || LayerError::Write(io::Error::other("the hashing thread stopped"));
        self.chunks
            .as_ref()
            .ok_or_else(hasher_gone)?
            .send(Arc::clone(&chunk))
            .map_err(|_| hasher_gone())?;
        self.out.write_all(&chunk).map_err(LayerError::Write)?;
        self.in_flight.push_back(chunk);
        Ok(())
    }

    fn finish(&mut self) -> Result<(u64, [u8; 32]), LayerError> {
        let (size, _) = self.out.finish()?;
        self.chunks = None;
        self.in_flight.clear();
        let digest = self
            .hasher
            .take()
            .and_then(|h| h.join().ok())
            .ok_or_else(|| LayerError::Write(io::Error::other("the hashing thread failed")))?;
        Ok((size, digest))
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        // The oldest chunk, once the hasher is done with it.
        let oldest = self.in_flight.pop_front()?;
        match Arc::try_unwrap(oldest) {
            Ok(buf) => Some(buf).filter(|b| b.len() == GZIP_CHUNK),
            Err(still_read) => {
                self.in_flight.push_front(still_read);
                None
            }
        }
    }
}

struct ZstdBackend<'o> {
    encoder: Option<zstd::stream::write::Encoder<'static, HashingWriter<'o>>>,
    spare: Option<Vec<u8>>,
}

impl Backend for ZstdBackend<'_> {
    fn push(&mut self, chunk: Vec<u8>, _last: bool) -> Result<(), LayerError> {
        if let Some(encoder) = self.encoder.as_mut() {
            encoder.write_all(&chunk).map_err(LayerError::Write)?;
        }
        self.spare = Some(chunk);
        Ok(())
    }

    fn finish(&mut self) -> Result<(u64, [u8; 32]), LayerError> {
        let encoder = self.encoder.take().ok_or(LayerError::Compress {
            algorithm: "zstd",
            message: "finished twice".into(),
        })?;
        let mut out = encoder.finish().map_err(LayerError::Write)?;
        out.finish()
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        self.spare.take().filter(|b| b.len() == GZIP_CHUNK)
    }
}

struct Job {
    index: u64,
    data: Vec<u8>,
    dict: Vec<u8>,
    last: bool,
}

struct Done {
    index: u64,
    compressed: Result<Vec<u8>, String>,
    crc: crc32fast::Hasher,
    data: Vec<u8>,
}

struct GzipBackend<'o> {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    pending: BTreeMap<u64, Done>,
    submitted: u64,
    written: u64,
    /// The last [`DICT`] bytes of input so far: the next chunk's dictionary.
    tail: Vec<u8>,
    crc: crc32fast::Hasher,
    /// Uncompressed bytes submitted (for the gzip trailer's ISIZE).
    input_len: u64,
    out: HashingWriter<'o>,
    spare: Vec<Vec<u8>>,
}

/// gzip member header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

impl GzipBackend<'_> {
    fn gzip_error(message: impl Into<String>) -> LayerError {
        LayerError::Compress {
            algorithm: "gzip",
            message: message.into(),
        }
    }

    /// Write out, in order, every finished chunk that is next.
    fn write_ready(&mut self) -> Result<(), LayerError> {
        while let Some(done) = self.pending.remove(&self.written) {
            let compressed = done.compressed.map_err(Self::gzip_error)?;
            self.out.write_all(&compressed).map_err(LayerError::Write)?;
            self.crc.combine(&done.crc);
            self.written += 1;
            if done.data.len() == GZIP_CHUNK && self.spare.len() < 4 {
                self.spare.push(done.data);
            }
        }
        Ok(())
    }

    fn receive(&mut self, done: Done) {
        self.pending.insert(done.index, done);
    }
}

impl Backend for GzipBackend<'_> {
    fn push(&mut self, chunk: Vec<u8>, last: bool) -> Result<(), LayerError> {
        if self.submitted == 0 {
            self.out
                .write_all(&GZIP_HEADER)
                .map_err(LayerError::Write)?;
        }
        let dict = self.tail.clone();
        self.input_len += chunk.len() as u64;
        if chunk.len() >= DICT {
            self.tail.clear();
            self.tail.extend_from_slice(&chunk[chunk.len() - DICT..]);
        } else {
            self.tail.extend_from_slice(&chunk);
            let excess = self.tail.len().saturating_sub(DICT);
            self.tail.drain(..excess);
        }
        let job = Job {
            index: self.submitted,
            data: chunk,
            dict,
            last,
        };
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Self::gzip_error("chunk after the last one"))?;
        jobs.send(job)
            .map_err(|_| Self::gzip_error("compression workers stopped"))?;
        self.submitted += 1;
        if last {
            self.jobs = None;
        }
        while let Ok(done) = self.done.try_recv() {
            self.receive(done);
        }
        self.write_ready()
    }

    fn finish(&mut self) -> Result<(u64, [u8; 32]), LayerError> {
        while self.written < self.submitted {
            let done = self
                .done
                .recv()
                .map_err(|_| Self::gzip_error("compression workers stopped"))?;
            self.receive(done);
            self.write_ready()?;
        }
        let mut trailer = [0u8; 8];
        let crc = std::mem::take(&mut self.crc);
        trailer[..4].copy_from_slice(&crc.finalize().to_le_bytes());
        // ISIZE is the length modulo 2^32.
        trailer[4..].copy_from_slice(&((self.input_len & 0xffff_ffff) as u32).to_le_bytes());
        self.out.write_all(&trailer).map_err(LayerError::Write)?;
        self.out.finish()
    }

    fn spare(&mut self) -> Option<Vec<u8>> {
        self.spare.pop()
    }
}

fn gzip_worker(jobs: &Mutex<Receiver<Job>>, done: &Sender<Done>, level: u32) {
    loop {
        let job = {
            let Ok(guard) = jobs.lock() else { return };
            match guard.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        // A fresh compressor per chunk: zlib-rs's `reset()` leaves state behind
        // that changes the next chunk's output (so bytes would depend on which
        // worker got which chunk, i.e. on the thread count).
        let mut compress = Compress::new(flate2::Compression::new(level), false);
        let compressed = deflate_chunk(&mut compress, &job.data, &job.dict, job.last);
        let mut crc = crc32fast::Hasher::new();
        crc.update(&job.data);
        let result = Done {
            index: job.index,
            compressed,
            crc,
            data: job.data,
        };
        if done.send(result).is_err() {
            return;
        }
    }
}

/// Raw-deflate one chunk, primed with `dict`; sync-flushed (byte aligned, not final)
/// unless it is the last chunk, which ends the deflate stream.
fn deflate_chunk(
    c: &mut Compress,
    data: &[u8],
    dict: &[u8],
    last: bool,
) -> Result<Vec<u8>, String> {
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(|e| e.to_string())?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    let start = c.total_in();
    loop {
        let consumed = (c.total_in() - start) as usize;
        let status = c
            .compress_vec(&data[consumed..], &mut out, flush)
            .map_err(|e| e.to_string())?;
        let consumed = (c.total_in() - start) as usize;
        if status == Status::StreamEnd {
            break;
        }
        // A flush is complete when all input is consumed and output space is left.
        if !last && consumed == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(4096));
    }
    Ok(out)
}
