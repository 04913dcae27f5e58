//! Recognising and undoing the compression of a tarball.
//!
//! gzip and zstd are decompressed in process (flate2, zstd). bzip2 and xz have no
//! decoder among forge's dependencies and are rare for layers (OCI only defines
//! gzip and zstd), so for `forge import` of such tarballs forge runs `bzip2 -dc` /
//! `xz -dc` as a child process, fed from a thread; if the program is missing the
//! error says which package to install.

use std::io::{self, Read, Write};
use std::process::{Command, Stdio};

use super::LayerError;

/// The compression of a stream, as recognised from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DetectedCompression {
    /// No known magic: a plain tar (or something else, which the tar reader rejects).
    None,
    /// `1f 8b`.
    Gzip,
    /// `BZh`.
    Bzip2,
    /// `fd 37 7a 58 5a 00`.
    Xz,
    /// `28 b5 2f fd`.
    Zstd,
}

/// Recognise the compression from the first bytes of a stream (6 are enough).
pub fn detect(head: &[u8]) -> DetectedCompression {
    if head.starts_with(&[0x1f, 0x8b]) {
        DetectedCompression::Gzip
    } else if head.starts_with(b"BZh") {
        DetectedCompression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        DetectedCompression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        DetectedCompression::Zstd
    } else {
        DetectedCompression::None
    }
}

/// Read up to 6 bytes, to detect the compression, and give them back as a reader
/// chained in front of the rest.
pub(crate) fn peek<R: Read>(mut input: R) -> io::Result<(DetectedCompression, impl Read)> {
    let mut head = [0u8; 6];
    let mut n = 0;
    while n < head.len() {
        match input.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let kind = detect(&head[..n]);
    Ok((kind, io::Cursor::new(head).take(n as u64).chain(input)))
}

/// Decompress gzip or zstd in process; `None` for formats that need a child
/// process.
pub(crate) fn in_process<'a, R: Read + 'a>(
    kind: DetectedCompression,
    input: R,
) -> Result<Result<Box<dyn Read + 'a>, R>, LayerError> {
    Ok(Ok(match kind {
        DetectedCompression::None => Box::new(input),
        DetectedCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        DetectedCompression::Zstd => {
            Box::new(zstd::stream::read::Decoder::new(input).map_err(LayerError::Input)?)
        }
        DetectedCompression::Bzip2 | DetectedCompression::Xz => return Ok(Err(input)),
    }))
}

/// A reader of `input` decompressed: the format is detected from its magic bytes
/// (gzip, zstd, bzip2, xz, or none for a plain tar).
///
/// bzip2 and xz are decompressed by the `bzip2` / `xz` programs (hence `Send`: the
/// input is fed to the child from a thread); a missing program is a
/// [`LayerError::DecompressorMissing`].
pub fn decompress(input: impl Read + Send + 'static) -> Result<Box<dyn Read>, LayerError> {
    let (kind, input) = peek(input).map_err(LayerError::Input)?;
    match in_process(kind, input)? {
        Ok(reader) => Ok(reader),
        Err(input) => {
            let (format, program, package) = match kind {
                DetectedCompression::Bzip2 => ("bzip2", "bzip2", "bzip2"),
                _ => ("xz", "xz", "xz-utils"),
            };
            external(input, format, program, package)
        }
    }
}

fn external(
    mut input: impl Read + Send + 'static,
    format: &'static str,
    program: &'static str,
    package: &'static str,
) -> Result<Box<dyn Read>, LayerError> {
    let mut child = Command::new(program)
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|source| LayerError::DecompressorMissing {
            format,
            program,
            package,
            source,
        })?;
    let missing = || {
        LayerError::Input(io::Error::other(format!(
            "`{program} -dc` has no stdin/stdout"
        )))
    };
    let mut stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let feeder = std::thread::spawn(move || -> io::Result<()> {
        io::copy(&mut input, &mut stdin)?;
        stdin.flush()
    });
    Ok(Box::new(ChildReader {
        stdout,
        child,
        feeder: Some(feeder),
        program,
    }))
}

/// Reads a decompressor's output; at its end, checks the program succeeded.
struct ChildReader {
    stdout: std::process::ChildStdout,
    child: std::process::Child,
    feeder: Option<std::thread::JoinHandle<io::Result<()>>>,
    program: &'static str,
}

impl Read for ChildReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.stdout.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(feeder) = self.feeder.take() {
                match feeder.join() {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(io::Error::other("decompressor feeder panicked")),
                }
                let status = self.child.wait()?;
                if !status.success() {
                    return Err(io::Error::other(format!(
                        "`{} -dc` failed ({status}): the stream is corrupt",
                        self.program
                    )));
                }
            }
        }
        Ok(n)
    }
}

impl Drop for ChildReader {
    fn drop(&mut self) {
        if self.feeder.is_some() {
            // Stopped early: don't leave the child running.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
