//! Scan-time benchmark: a cold and a warm scan of a context of N files
//! (default 20,000), with a stat cache.
//!
//! `cargo run --release -p forge-context --example scan_bench [N]`

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(20_000);
    let ctx = tempfile::tempdir()?;
    let store = tempfile::tempdir()?;
    let old = filetime::FileTime::from(SystemTime::now() - Duration::from_secs(3600));
    for i in 0..n {
        let dir = ctx.path().join(format!("d{:03}", i % 200));
        std::fs::create_dir_all(&dir)?;
        let f = dir.join(format!("f{i}.txt"));
        std::fs::write(&f, format!("file {i} {}", "x".repeat(i % 512)))?;
        filetime::set_file_mtime(&f, old)?;
    }
    // Let the files' ctimes leave the racy window.
    std::thread::sleep(Duration::from_millis(1100));
    let cache = store.path().join("statcache");
    let context = forge_context::Context::open(ctx.path(), None)?;
    let run = |label: &str, cache: Option<&Path>| -> Result<(), Box<dyn std::error::Error>> {
        let t = Instant::now();
        let index = context.scan(cache)?;
        let scanned = t.elapsed();
        let t = Instant::now();
        let digest = index.select(&[".".to_string()], &[])?.digest();
        println!(
            "{label:<22} {n} files: scan {:>8.1} ms (hashed {}, reused {}), select+digest {:>6.1} ms  {digest}",
            scanned.as_secs_f64() * 1e3,
            index.stats.hashed,
            index.stats.reused,
            t.elapsed().as_secs_f64() * 1e3,
        );
        Ok(())
    };
    run("no cache", None)?;
    run("cold (writes cache)", Some(&cache))?;
    for _ in 0..3 {
        run("warm", Some(&cache))?;
    }
    Ok(())
}
