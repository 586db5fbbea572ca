//! A minimal HTTP/1.1 responder for the metrics and the status page:
//! `GET` (and `HEAD`) of `/metrics`, the page (`/`, its script and style,
//! compiled into the binary) and the two documents it reads
//! (`/status.json`: the daemon's [`Status`](super::Status), as
//! `mpbond status --json` prints it; `/history.json`: the last minutes,
//! [`HistoryDocument`](super::history::HistoryDocument)); 404 for any
//! other path, 405 for any other method, 400 for what is not a request,
//! 431 for a head larger than [`MAX_HEAD`]. One request per connection
//! (`Connection: close`), read within [`REQUEST_TIMEOUT`]; at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once). The request
//! parser is pure and never panics.
//!
//! Hand-written rather than a web framework: a handful of fixed routes,
//! no body to read, and the product otherwise needs no HTTP stack.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use super::history::History;
use super::Provider;

/// The status page, its script and its style.
const PAGE_HTML: &str = include_str!("page/index.html");
const PAGE_JS: &str = include_str!("page/page.js");
const PAGE_CSS: &str = include_str!("page/page.css");

/// `Cache-Control` of what changes all the time (documents, metrics).
const NO_STORE: &str = "no-store";
/// `Cache-Control` of the page's files: fixed per binary, but checked
/// again on each load so that an upgraded daemon's page is never mixed
/// with an old script.
const NO_CACHE: &str = "no-cache";

/// Largest request head (request line and headers) read.
pub const MAX_HEAD: usize = 8192;

/// How long a peer may take to send its request and take the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once at most.
pub const MAX_CONNECTIONS: usize = 16;

/// Why the metrics listener could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error(
        "cannot serve metrics on {addr}: check that the address belongs to this host (the \
         [control] metrics key) and that no other process uses the port"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// A request head that is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    /// The head is larger than [`MAX_HEAD`].
    #[error("request head larger than {MAX_HEAD} bytes")]
    TooLarge,
    /// The request line is not `METHOD TARGET HTTP/1.x`.
    #[error("not an HTTP/1 request line")]
    Malformed,
}

/// The request line of a complete request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head<'a> {
    /// The method (`GET`).
    pub method: &'a str,
    /// The path, without a query string.
    pub path: &'a str,
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete (no empty line yet) and shorter than [`MAX_HEAD`].
pub fn parse_head(buf: &[u8]) -> Result<Option<Head<'_>>, BadRequest> {
    let end = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n"));
    let Some(end) = end.filter(|&end| end < MAX_HEAD) else {
        return if buf.len() >= MAX_HEAD {
            Err(BadRequest::TooLarge)
        } else {
            Ok(None)
        };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| BadRequest::Malformed)?;
    let line = head.lines().next().ok_or(BadRequest::Malformed)?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed);
    };
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_uppercase());
    if !token(method) || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Err(BadRequest::Malformed);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Some(Head { method, path }))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: &'static str,
    /// `Cache-Control`.
    pub cache: &'static str,
    /// The body.
    pub body: String,
    /// Whether to leave the body out (a `HEAD` request).
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            cache: NO_STORE,
            body: format!("{body}\n"),
            head_only: false,
        }
    }

    /// A 200 with `body` of type `content_type`.
    fn ok(content_type: &'static str, cache: &'static str, body: String) -> Self {
        Self {
            status: 200,
            content_type,
            cache,
            body,
            head_only: false,
        }
    }

    /// The response as bytes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            _ => "Internal Server Error",
        };
        let allow = if self.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        };
        // The page loads nothing from elsewhere and runs no inline code;
        // no other site may frame it.
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}\
             Cache-Control: {}\r\nX-Content-Type-Options: nosniff\r\n\
             Content-Security-Policy: default-src 'self'; img-src 'self' data:; \
             frame-ancestors 'none'\r\nConnection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len(),
            self.cache,
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// Which resource a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/metrics`.
    Metrics,
    /// `/` (and `/index.html`): the status page.
    Page,
    /// `/page.js`.
    Script,
    /// `/page.css`.
    Style,
    /// `/status.json`: the status document.
    Status,
    /// `/history.json`: the last minutes.
    History,
    /// Anything else.
    NotFound,
}

/// The route of `path`.
pub fn route(path: &str) -> Route {
    match path {
        "/metrics" => Route::Metrics,
        "/" | "/index.html" => Route::Page,
        "/page.js" => Route::Script,
        "/page.css" => Route::Style,
        "/status.json" => Route::Status,
        "/history.json" => Route::History,
        _ => Route::NotFound,
    }
}

/// Serves the metrics and the status page on `listener` until the task is
/// aborted; `history`: the last minutes the page shows on opening.
pub async fn serve(listener: TcpListener, provider: Provider, history: Arc<History>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            debug!(%peer, "metrics: too many connections; closing");
            continue;
        };
        let provider = provider.clone();
        let history = Arc::clone(&history);
        tokio::spawn(async move {
            let respond = respond(stream, &provider, &history);
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, respond)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
            {
                debug!(%peer, error = %e, "metrics request failed");
            }
            drop(slot);
        });
    }
}

/// Binds the metrics listener on `addr`. Must run inside a Tokio runtime.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    let bind = || -> io::Result<TcpListener> {
        let socket = std::net::TcpListener::bind(addr)?;
        socket.set_nonblocking(true)?;
        TcpListener::from_std(socket)
    };
    let listener = bind().map_err(|source| HttpError::Bind { addr, source })?;
    info!(%addr, "serving the status page at http://{addr}/ and metrics at /metrics");
    Ok(listener)
}

/// Reads one request from `stream` and answers it.
async fn respond(mut stream: TcpStream, provider: &Provider, history: &History) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0; 1024];
    let response = loop {
        match parse_head(&buf) {
            Ok(Some(head)) => break answer(head, provider, history).await,
            Ok(None) => {}
            Err(BadRequest::TooLarge) => break Response::text(431, "request head too large"),
            Err(BadRequest::Malformed) => break Response::text(400, "not an HTTP/1 request"),
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await
}

/// The answer to a complete request head.
async fn answer(head: Head<'_>, provider: &Provider, history: &History) -> Response {
    let head_only = head.method == "HEAD";
    if head.method != "GET" && !head_only {
        return Response::text(405, "only GET and HEAD");
    }
    const JSON: &str = "application/json";
    let failed = || Response::text(500, "the daemon could not build its status (see its log)");
    let mut response = match route(head.path) {
        Route::NotFound => Response::text(
            404,
            "not found: the status page is at /, the metrics at /metrics",
        ),
        Route::Page => Response::ok("text/html; charset=utf-8", NO_CACHE, PAGE_HTML.into()),
        Route::Script => Response::ok("text/javascript; charset=utf-8", NO_CACHE, PAGE_JS.into()),
        Route::Style => Response::ok("text/css; charset=utf-8", NO_CACHE, PAGE_CSS.into()),
        Route::Metrics => match super::snapshot(provider).await {
            Some(status) => Response::ok(
                super::metrics::CONTENT_TYPE,
                NO_STORE,
                super::metrics::render(&status),
            ),
            None => failed(),
        },
        Route::Status => match super::snapshot(provider)
            .await
            .map(|s| serde_json::to_string(&s))
        {
            Some(Ok(json)) => Response::ok(JSON, NO_STORE, json),
            _ => failed(),
        },
        Route::History => match serde_json::to_string(&history.document()) {
            Ok(json) => Response::ok(JSON, NO_STORE, json),
            Err(_) => failed(),
        },
    };
    response.head_only = head_only;
    response
}
