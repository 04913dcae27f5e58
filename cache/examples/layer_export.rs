//! Benchmark helper for `bench/b6-layer-export.sh` (row B6).
//!
//! ```text
//! layer_export gen <dir> <total-MB> <files>     # deterministic test tree
//! layer_export export <dir> <gzip|zstd|none> [threads] [level] [out-file]
//! ```
//!
//! `export` writes the layer (to `out-file`, or discards it), and prints one line:
//! `<compression> threads=<n> MB/s=<uncompressed MB per second> size=<blob bytes>
//! uncompressed=<bytes> digest=<sha256:…> diff_id=<sha256:…>`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use forge_cache::layer::{write_dir_layer, Compression, LayerOptions};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("gen") if args.len() == 4 => generate(
            Path::new(&args[1]),
            args[2].parse().unwrap_or(1000),
            args[3].parse().unwrap_or(100_000),
        ),
        Some("export") if args.len() >= 3 => export(&args[1..]),
        Some("raw") if args.len() == 3 => raw(Path::new(&args[1]), &args[2]),
        _ => {
            eprintln!(
                "usage: layer_export gen <dir> <total-MB> <files>\n       layer_export export <dir> <gzip|zstd|none> [threads] [level] [out-file]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layer_export: {e}");
            ExitCode::FAILURE
        }
    }
}

fn export(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(&args[0]);
    let compression: Compression = args[1].parse()?;
    let threads = args.get(2).map(|t| t.parse()).transpose()?.unwrap_or(0);
    let level = args.get(3).map(|l| l.parse()).transpose()?;
    let opts = LayerOptions {
        compression,
        level,
        threads,
        source_date_epoch: 0,
        ..LayerOptions::default()
    };
    let start = Instant::now();
    let info = match args.get(4) {
        Some(path) => {
            let mut out = io::BufWriter::with_capacity(1 << 20, fs::File::create(path)?);
            let info = write_dir_layer(&root, &opts, &mut out)?;
            out.flush()?;
            info
        }
        None => write_dir_layer(&root, &opts, &mut io::sink())?,
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} threads={} MB/s={:.1} size={} uncompressed={} digest={} diff_id={}",
        args[1],
        effective_threads(&opts),
        info.uncompressed_size as f64 / 1e6 / secs,
        info.size,
        info.uncompressed_size,
        info.digest,
        info.diff_id
    );
    Ok(())
}

/// Raw single-thread speed of the compressor on a file (no tar, no hashing, one
/// core): the physical reference the pipeline's speed is compared with.
fn raw(file: &Path, what: &str) -> Result<(), Box<dyn std::error::Error>> {
    let data = fs::read(file)?;
    let start = Instant::now();
    let out_len = match what {
        "gzip" => {
            let mut enc = flate2::write::GzEncoder::new(io::sink(), flate2::Compression::new(6));
            enc.write_all(&data)?;
            enc.finish()?;
            0
        }
        "zstd" => zstd::bulk::compress(&data, 3)?.len(),
        "sha256" => {
            use sha2::Digest;
            sha2::Sha256::digest(&data)[0] as usize
        }
        _ => return Err("raw: gzip, zstd or sha256".into()),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "raw {what} 1 core MB/s={:.1} ({out_len})",
        data.len() as f64 / 1e6 / secs
    );
    Ok(())
}

fn effective_threads(opts: &LayerOptions) -> usize {
    if opts.threads > 0 {
        opts.threads
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// xorshift64*: a tiny seeded generator, so the tree is the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "the",
    "image",
    "layer",
    "build",
    "cache",
    "digest",
    "static",
    "const",
    "return",
    "struct",
    "impl",
    "fn",
    "let",
    "mut",
    "self",
    "match",
    "Some",
    "None",
    "Ok",
    "Err",
    "string",
    "vector",
    "config",
    "manifest",
    "registry",
    "docker",
    "forge",
    "compile",
    "link",
    "library",
    "include",
    "define",
    "value",
    "index",
    "error",
    "result",
    "option",
    "module",
    "package",
    "version",
    "license",
    "copyright",
    "function",
    "variable",
    "pointer",
    "buffer",
    "stream",
    "thread",
];

/// Source-code-like text (compresses ~3-4x with gzip).
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut indent = 0usize;
    while out.len() < len {
        let words = 3 + rng.below(8);
        out.extend(std::iter::repeat_n(b' ', indent * 4));
        for i in 0..words {
            if i > 0 {
                out.push(b' ');
            }
            let w = WORDS[rng.below(WORDS.len() as u64) as usize];
            out.extend_from_slice(w.as_bytes());
            if rng.below(5) == 0 {
                out.extend_from_slice(format!("_{}", rng.below(1000)).as_bytes());
            }
        }
        out.extend_from_slice(if rng.below(3) == 0 { b" {\n" } else { b";\n" });
        indent = (indent + rng.below(3) as usize).saturating_sub(1).min(6);
    }
    out.truncate(len);
    out
}

/// Executable-like bytes: runs of low-entropy bytes (like machine code), repeated
/// structures (like tables) and some random runs (~2x compressible overall).
fn binary(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    let mut pos = 0;
    while pos < len {
        let run = (64 + rng.below(4096) as usize).min(len - pos);
        match rng.below(10) {
            0..=4 => {
                for b in &mut out[pos..pos + run] {
                    *b &= 0x8f;
                }
            }
            5..=7 => {
                let pattern = (rng.next() & 0x0f0f_0f0f_0f0f_0f0f).to_le_bytes();
                for (i, b) in out[pos..pos + run].iter_mut().enumerate() {
                    *b = pattern[i % 8];
                }
            }
            _ => {}
        }
        pos += run;
    }
    out
}

/// Incompressible bytes (like already compressed images or archives).
fn random(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out);
    out
}

/// A deterministic tree of about `total_mb` MB in `files` files: many small files
/// (log-uniform 100 B – 32 KiB) and a few large ones filling the rest; 70% of
/// files text, 20% executable-like, 10% incompressible; 100 top directories of 10 subdirectories.
fn generate(dir: &Path, total_mb: u64, files: u64) -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(0x05ee_d0ff_026e);
    let total = total_mb * 1_000_000;
    let large = (files / 100).max(1);
    let small = files - large;
    let mut written = 0u64;
    let mut sizes = Vec::with_capacity(files as usize);
    for _ in 0..small {
        let exp = (rng.below(10_000) as f64) / 10_000.0;
        let size = (100.0 * (327.68f64).powf(exp)) as u64;
        sizes.push(size);
        written += size;
    }
    let rest = total.saturating_sub(written);
    for i in 0..large {
        // Uneven large files: weights 1..=large, summing to `rest`.
        let weight = (i % 10) + 1;
        let sum_weights: u64 = (0..large).map(|j| (j % 10) + 1).sum();
        sizes.push(rest * weight / sum_weights);
    }
    for (n, size) in sizes.into_iter().enumerate() {
        let sub = dir.join(format!("d{:02}/s{}", n % 100, (n / 100) % 10));
        if n < 1000 {
            fs::create_dir_all(&sub)?;
        }
        let body = match rng.below(10) {
            0..=6 => text(&mut rng, size as usize),
            7 | 8 => binary(&mut rng, size as usize),
            _ => random(&mut rng, size as usize),
        };
        fs::write(sub.join(format!("f{n:06}")), body)?;
    }
    Ok(())
}
