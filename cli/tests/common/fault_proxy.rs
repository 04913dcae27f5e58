//! A fault-injecting HTTP proxy on loopback, between forge and a registry:
//! one request per connection (it answers `Connection: close`), and with a
//! seeded random choice per request it passes the exchange through, answers
//! `500`, answers `429` with `Retry-After: 0`, drops the connection in the
//! middle of the response body, truncates the body (fewer bytes than its
//! `Content-Length`, then closes), or flips one byte of the body.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What the proxy did to one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Passed through untouched.
    None,
    /// Answered 500 without asking the registry.
    Error500,
    /// Answered 429 with `Retry-After: 0` without asking the registry.
    TooMany429,
    /// Closed the connection halfway through the response body.
    Drop,
    /// Sent part of the body, then closed (Content-Length unmet).
    Truncate,
    /// Flipped one byte of the body.
    Corrupt,
}

/// A running proxy; stops accepting when dropped.
pub struct FaultProxy {
    /// `127.0.0.1:PORT` to give forge in place of the registry's address.
    pub addr: String,
    stop: Arc<AtomicBool>,
    /// What was done, in order.
    pub log: Arc<Mutex<Vec<(String, Fault)>>>,
}

/// One HTTP message's head and body as read from a stream.
struct Message {
    head: Vec<String>,
    body: Vec<u8>,
}

fn read_message(reader: &mut BufReader<TcpStream>, is_head_response: bool) -> Option<Message> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let header = |name: &str| {
        head.iter().skip(1).find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let mut body = Vec::new();
    let no_body = is_head_response
        || head.first().is_some_and(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|s| s == "204" || s == "304" || s.starts_with('1'))
        });
    if no_body {
        return Some(Message { head, body });
    }
    if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body).ok()?;
    } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            chunk.truncate(size);
            body.extend_from_slice(&chunk);
            if size == 0 {
                break;
            }
        }
    }
    Some(Message { head, body })
}

/// The head with framing headers replaced: `Content-Length` of `len` and
/// `Connection: close`.
fn write_head(out: &mut TcpStream, head: &[String], len: usize) -> std::io::Result<()> {
    let mut text = String::new();
    for (i, line) in head.iter().enumerate() {
        if i > 0 {
            let name = line
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            ) {
                continue;
            }
        }
        text.push_str(line);
        text.push_str("\r\n");
    }
    text.push_str(&format!(
        "Content-Length: {len}\r\nConnection: close\r\n\r\n"
    ));
    out.write_all(text.as_bytes())
}

struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> u64 {
        // splitmix64: each call a new state, shared by the worker threads.
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

impl FaultProxy {
    /// Proxies to `upstream` (`host:port`); each request meets a fault with
    /// probability `rate` (0.0–1.0), chosen by a generator seeded with `seed`.
    pub fn start(upstream: &str, rate: f64, seed: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().expect("addr").to_string();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let rng = Arc::new(Rng(AtomicU64::new(seed)));
        let upstream = upstream.to_string();
        {
            let (stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            let (upstream, log, rng) =
                                (upstream.clone(), Arc::clone(&log), Arc::clone(&rng));
                            std::thread::spawn(move || {
                                let _ = serve(client, &upstream, rate, &rng, &log);
                            });
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                    }
                }
            });
        }
        Self { addr, stop, log }
    }

    /// How many exchanges met each fault.
    pub fn counts(&self) -> std::collections::BTreeMap<Fault, usize> {
        let mut counts = std::collections::BTreeMap::new();
        for (_, fault) in self.log.lock().expect("log").iter() {
            *counts.entry(*fault).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(
    client: TcpStream,
    upstream: &str,
    rate: f64,
    rng: &Rng,
    log: &Mutex<Vec<(String, Fault)>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(request) = read_message(&mut reader, false) else {
        return Ok(());
    };
    let line = request.head.first().cloned().unwrap_or_default();
    let is_head = line.starts_with("HEAD ");
    let roll = (rng.next() % 10_000) as f64 / 10_000.0;
    let fault = if roll >= rate {
        Fault::None
    } else {
        match rng.next() % 5 {
            0 => Fault::Error500,
            1 => Fault::TooMany429,
            2 => Fault::Drop,
            3 => Fault::Truncate,
            _ => Fault::Corrupt,
        }
    };
    log.lock()
        .map_err(|_| std::io::Error::other("log"))?
        .push((line.clone(), fault));
    match fault {
        Fault::Error500 => {
            let body = br#"{"errors":[{"code":"UNKNOWN","message":"injected"}]}"#;
            write!(
                client,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            client.write_all(body)?;
            return Ok(());
        }
        Fault::TooMany429 => {
            write!(
                client,
                "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            return Ok(());
        }
        _ => {}
    }
    // Forward the request as it came (one request, then close).
    let mut up = TcpStream::connect(upstream)?;
    let mut head = request.head.clone();
    for h in head.iter_mut().skip(1) {
        if h.to_ascii_lowercase().starts_with("host:") {
            *h = format!("Host: {upstream}");
        }
    }
    write_head(&mut up, &head, request.body.len())?;
    up.write_all(&request.body)?;
    let mut up_reader = BufReader::new(up.try_clone()?);
    let Some(response) = read_message(&mut up_reader, is_head) else {
        return Ok(());
    };
    let mut body = response.body;
    // Faults that touch the body need one; HEADs and empty bodies pass.
    let fault = if body.is_empty() { Fault::None } else { fault };
    // Locations point at the registry: keep them on the proxy.
    let head: Vec<String> = response
        .head
        .iter()
        .map(|h| h.replace(&format!("http://{upstream}"), ""))
        .collect();
    let declared = if is_head {
        // A HEAD's Content-Length describes the resource: keep it.
        let len = response
            .head
            .iter()
            .find_map(|h| {
                let (k, v) = h.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        write_head(&mut client, &head, len)?;
        return Ok(());
    } else {
        body.len()
    };
    match fault {
        Fault::Drop => {
            write_head(&mut client, &head, declared)?;
            client.write_all(&body[..body.len() / 2])?;
            client.shutdown(Shutdown::Both)?;
        }
        Fault::Truncate => {
            write_head(&mut client, &head, declared)?;
            client.write_all(&body[..body.len() - body.len().clamp(1, 7)])?;
            client.shutdown(Shutdown::Write)?;
        }
        Fault::Corrupt => {
            let i = (rng.next() as usize) % body.len();
            body[i] ^= 0x5a;
            write_head(&mut client, &head, declared)?;
            client.write_all(&body)?;
        }
        _ => {
            write_head(&mut client, &head, declared)?;
            client.write_all(&body)?;
        }
    }
    Ok(())
}
