//! Deterministic tar headers: ustar, with a PAX extended header only when a value
//! does not fit (or for xattrs).

use super::compress::TarSink;
use super::LayerError;

/// Tar type flags.
pub(crate) mod kind {
    pub(crate) const FILE: u8 = b'0';
    pub(crate) const HARDLINK: u8 = b'1';
    pub(crate) const SYMLINK: u8 = b'2';
    pub(crate) const CHAR: u8 = b'3';
    pub(crate) const BLOCK: u8 = b'4';
    pub(crate) const DIR: u8 = b'5';
    pub(crate) const FIFO: u8 = b'6';
    pub(crate) const PAX: u8 = b'x';
}

/// Extended attributes `(name, value)`, sorted by name.
pub(crate) type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry's header fields.
pub(crate) struct Header<'a> {
    /// The tar name (directories end in `/`).
    pub(crate) name: &'a [u8],
    pub(crate) kind: u8,
    /// Permission bits incl. setuid/setgid/sticky.
    pub(crate) mode: u32,
    pub(crate) uid: u64,
    pub(crate) gid: u64,
    pub(crate) size: u64,
    pub(crate) mtime: u64,
    /// Symlink target or hardlink target.
    pub(crate) link: &'a [u8],
    pub(crate) dev_major: u64,
    pub(crate) dev_minor: u64,
    /// `(name, value)` sorted by name.
    pub(crate) xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

const MAX_OCTAL_7: u64 = 0o7_777_777;
const MAX_OCTAL_11: u64 = 0o77_777_777_777;

/// Write the header block(s) of an entry (not its data).
pub(crate) fn write_header(sink: &mut TarSink<'_>, h: &Header<'_>) -> Result<(), LayerError> {
    sink.count_entry();
    let mut pax = Vec::new();
    let (prefix, name) = match split_ustar(h.name) {
        Some(split) => split,
        None => {
            pax_record(&mut pax, b"path", h.name);
            (&[][..], truncate(h.name, 100))
        }
    };
    let link = if h.link.len() > 100 {
        pax_record(&mut pax, b"linkpath", h.link);
        truncate(h.link, 100)
    } else {
        h.link
    };
    let size = if h.size > MAX_OCTAL_11 {
        pax_record(&mut pax, b"size", h.size.to_string().as_bytes());
        0
    } else {
        h.size
    };
    let uid = if h.uid > MAX_OCTAL_7 {
        pax_record(&mut pax, b"uid", h.uid.to_string().as_bytes());
        0
    } else {
        h.uid
    };
    let gid = if h.gid > MAX_OCTAL_7 {
        pax_record(&mut pax, b"gid", h.gid.to_string().as_bytes());
        0
    } else {
        h.gid
    };
    let mtime = if h.mtime > MAX_OCTAL_11 {
        pax_record(&mut pax, b"mtime", h.mtime.to_string().as_bytes());
        0
    } else {
        h.mtime
    };
    for (key, value) in h.xattrs {
        let mut k = b"SCHILY.xattr.".to_vec();
        k.extend_from_slice(key);
        pax_record(&mut pax, &k, value);
    }
    if !pax.is_empty() {
        let block = ustar_block(
            &[],
            b"././@PaxHeader",
            kind::PAX,
            0o644,
            0,
            0,
            pax.len() as u64,
            0,
            &[],
            0,
            0,
        );
        sink.write(&block)?;
        sink.write(&pax)?;
        pad(sink, pax.len() as u64)?;
    }
    let block = ustar_block(
        prefix,
        name,
        h.kind,
        h.mode & 0o7777,
        uid,
        gid,
        size,
        mtime,
        link,
        h.dev_major.min(MAX_OCTAL_7),
        h.dev_minor.min(MAX_OCTAL_7),
    );
    sink.write(&block)
}

/// Zero padding after `len` bytes of data, up to the next 512-byte block.
pub(crate) fn pad(sink: &mut TarSink<'_>, len: u64) -> Result<(), LayerError> {
    let rem = (len % 512) as usize;
    if rem != 0 {
        sink.zeros(512 - rem)?;
    }
    Ok(())
}

/// The end of the archive: two zero blocks.
pub(crate) fn write_end(sink: &mut TarSink<'_>) -> Result<(), LayerError> {
    sink.zeros(1024)
}

fn truncate(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

/// Split a name into ustar (prefix, name), if it fits.
fn split_ustar(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.len() <= 100 {
        return Some((&[], path));
    }
    if path.len() > 256 {
        return None;
    }
    // Don't split at a trailing slash: the name part must not be empty.
    let searchable = &path[..path.len() - 1];
    searchable
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| i)
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100 && i > 0)
        .map(|i| (&path[..i], &path[i + 1..]))
}

/// Append one PAX record `"<len> <key>=<value>\n"`, where len counts itself.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    field[..width].copy_from_slice(&text.as_bytes()[text.len() - width..]);
    field[width] = 0;
}

#[allow(clippy::too_many_arguments)]
fn ustar_block(
    prefix: &[u8],
    name: &[u8],
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: u64,
    link: &[u8],
    dev_major: u64,
    dev_minor: u64,
) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], u64::from(mode));
    octal(&mut b[108..116], uid);
    octal(&mut b[116..124], gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], mtime);
    b[156] = kind;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], dev_major);
    octal(&mut b[337..345], dev_minor);
    b[345..345 + prefix.len()].copy_from_slice(prefix);
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    octal(&mut b[148..155], sum);
    b[155] = b' ';
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        let mut out = Vec::new();
        pax_record(&mut out, b"path", b"a");
        assert_eq!(out, b"9 path=a\n");
        let mut out = Vec::new();
        let v = vec![b'x'; 95];
        pax_record(&mut out, b"path", &v);
        let text = String::from_utf8(out.clone()).expect("ascii");
        let n: usize = text.split(' ').next().expect("len").parse().expect("num");
        assert_eq!(n, out.len());
    }

    #[test]
    fn ustar_split() {
        let long = format!("{}/{}", "a".repeat(120), "b".repeat(90));
        let (p, n) = split_ustar(long.as_bytes()).expect("fits");
        assert_eq!(p.len(), 120);
        assert_eq!(n.len(), 90);
        assert!(split_ustar("c".repeat(150).as_bytes()).is_none());
    }
}
