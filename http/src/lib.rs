//! forge's one HTTP client: downloads for `forge import URL` (and later `ADD
//! https://…`), and the transport the registry client will share, so proxies,
//! TLS roots, timeouts and error messages behave the same everywhere.
//!
//! Built on `ureq` (blocking, small, rustls with the system's root certificates):
//! forge's I/O is synchronous, and an async runtime would cost compile time and
//! complexity for nothing here. `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` are
//! honoured, as curl and docker do.
//!
//! ```no_run
//! let client = forge_http::Client::new();
//! let mut download = client.get("https://example.com/rootfs.tar.gz")?;
//! let mut bytes = Vec::new();
//! std::io::Read::read_to_end(&mut download.body, &mut bytes).ok();
//! # Ok::<(), forge_http::HttpError>(())
//! ```

use std::io::Read;
use std::time::Duration;

/// What can go wrong fetching a URL.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum HttpError {
    /// Not an `http://` or `https://` URL.
    #[error("`{url}` is not an http:// or https:// URL")]
    #[diagnostic(
        code(http::invalid_url),
        help("give a full URL, e.g. https://example.com/rootfs.tar")
    )]
    InvalidUrl {
        /// The URL as given.
        url: String,
    },
    /// The server answered with an error status.
    #[error("`{url}` answered {status} {reason}")]
    #[diagnostic(
        code(http::status),
        help("check the URL; the server did not return the file")
    )]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The status text.
        reason: String,
    },
    /// The request did not get an answer (DNS, connection, TLS, timeout).
    #[error("cannot fetch `{url}`: {message}")]
    #[diagnostic(
        code(http::transport),
        help("check the network, the proxy settings (HTTP_PROXY, HTTPS_PROXY, NO_PROXY) and the host name")
    )]
    Transport {
        /// The URL.
        url: String,
        /// What failed.
        message: String,
    },
}

impl HttpError {
    /// Whether the fault is the user's input (a bad URL, a missing file on the
    /// server) rather than the environment (network, TLS).
    pub fn is_input_error(&self) -> bool {
        !matches!(self, Self::Transport { .. })
    }
}

/// A response body being downloaded.
pub struct Download {
    /// The body, streamed.
    pub body: Box<dyn Read + Send + Sync + 'static>,
    /// `Content-Length`, when the server sent one.
    pub content_length: Option<u64>,
    /// The URL after redirects.
    pub url: String,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("content_length", &self.content_length)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The HTTP client. Cheap to clone; connections are pooled.
#[derive(Debug, Clone)]
pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with forge's user agent, proxies from the environment, a 30 s
    /// connect timeout and a 5 min timeout between reads.
    pub fn new() -> Self {
        let agent = ureq::AgentBuilder::new()
            .user_agent(concat!("forge/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(300))
            .try_proxy_from_env(true)
            .redirects(5)
            .build();
        Self { agent }
    }

    /// The underlying agent (its proxies, TLS roots and timeouts), for the
    /// registry client's requests.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    /// Starts a GET of `url`; the body streams from the returned [`Download`].
    ///
    /// # Errors
    /// A URL that is not http(s), an error status, or no answer.
    pub fn get(&self, url: &str) -> Result<Download, HttpError> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(HttpError::InvalidUrl {
                url: url.to_string(),
            });
        }
        match self.agent.get(url).call() {
            Ok(response) => {
                let content_length = response
                    .header("Content-Length")
                    .and_then(|v| v.trim().parse().ok());
                let final_url = response.get_url().to_string();
                Ok(Download {
                    body: response.into_reader(),
                    content_length,
                    url: final_url,
                })
            }
            Err(ureq::Error::Status(status, response)) => Err(HttpError::Status {
                url: url.to_string(),
                status,
                reason: response.status_text().to_string(),
            }),
            Err(ureq::Error::Transport(t)) => Err(HttpError::Transport {
                url: url.to_string(),
                message: t.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// Serves `body` at `/file` and 404 elsewhere, for `requests` requests.
    fn serve(body: &'static [u8], requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let Ok(mut stream) = stream else { continue };
                let mut line = String::new();
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                reader.read_line(&mut line).ok();
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).map_or(true, |n| n == 0) || h == "\r\n" {
                        break;
                    }
                }
                let reply = if line.starts_with("GET /file ") {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec()
                };
                stream.write_all(&reply).ok();
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn downloads_stream_the_body() {
        let base = serve(b"hello, forge", 1);
        let mut d = Client::new().get(&format!("{base}/file")).expect("200");
        assert_eq!(d.content_length, Some(12));
        let mut body = String::new();
        d.body.read_to_string(&mut body).expect("read");
        assert_eq!(body, "hello, forge");
    }

    #[test]
    fn error_statuses_and_bad_urls_are_input_errors() {
        let base = serve(b"", 1);
        let e = Client::new()
            .get(&format!("{base}/missing"))
            .expect_err("404");
        assert!(matches!(e, HttpError::Status { status: 404, .. }), "{e}");
        assert!(e.is_input_error());
        let e = Client::new()
            .get("ftp://example.com/x")
            .expect_err("scheme");
        assert!(matches!(e, HttpError::InvalidUrl { .. }));
    }

    #[test]
    fn no_answer_is_an_environment_error() {
        // A port nothing listens on: bind, learn the port, close.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let e = Client::new()
            .get(&format!("http://127.0.0.1:{port}/x"))
            .expect_err("refused");
        assert!(!e.is_input_error(), "{e}");
    }
}
