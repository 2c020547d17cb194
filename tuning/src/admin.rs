//! The admin HTTP endpoint that turbo-dex and dex-trader serve
//! (`/health`, `/ready`, `/stats`, `/metrics`): a small, bounded HTTP/1.1
//! server on its own thread, and a Prometheus text-format encoder
//! ([`prom`]).
//!
//! The binaries own the routes: they implement [`Handler`], which maps a
//! path to a [`Response`]. This module owns everything between the socket
//! and that call.
//!
//! # Guarantees
//!
//! - **One thread, off the engine's cores.** [`AdminServer::start`] spawns
//!   one thread, named [`AdminConfig::thread_name`], that runs a tokio
//!   current-thread runtime; every accept, parse, [`Handler::get`] call and
//!   write happens there. The thread is not pinned: it runs wherever the OS
//!   puts it, and callers pin nothing to it. (To keep it off the engine's
//!   cores, restrict the engine's cores with `isolcpus`/cpusets, or start
//!   the server before pinning and leave its affinity to the OS; it
//!   inherits the affinity of the thread that calls [`AdminServer::start`].)
//!   Nothing here takes a lock or sends on a channel that another thread
//!   waits on, so a flood of connections or slow clients costs only this
//!   thread. What [`Handler::get`] reads is the caller's business: it
//!   should read counters the engine publishes (atomics, seqlocks), never
//!   wait for an engine thread.
//! - **Bounded connections.** At most [`AdminConfig::max_connections`]
//!   (default [`DEFAULT_MAX_CONNECTIONS`]) are served at once; one more is
//!   accepted and closed at once, without reading from it.
//! - **Bounded time to send a request.** A client that does not send a whole
//!   request head within [`AdminConfig::header_timeout`] (default
//!   [`DEFAULT_HEADER_TIMEOUT`]) is closed. That covers a connection that
//!   sends nothing, a half-sent head, and an idle keep-alive connection
//!   waiting for its next request.
//! - **Bounded request size.** A request head (request line and headers)
//!   over [`AdminConfig::max_request_bytes`] (default
//!   [`DEFAULT_MAX_REQUEST_BYTES`]) gets `431` and is closed; at most 100
//!   headers. Request bodies are never read into memory: they are drained
//!   or the connection is closed.
//! - **Answers.** `GET` and `HEAD` go to [`Handler::get`] with the path
//!   (no query string); `None` gives `404` with body `not found`. `HEAD`
//!   gets the same status and headers with no body. `POST` goes to
//!   [`Handler::post`] with the path and the `Authorization` header (its
//!   body is never read); a handler without POST routes (the default), or
//!   `None` for that path, gives `405`. Any other method gets `405` with
//!   `Allow: GET, HEAD`. A malformed request gets `400` from
//!   hyper itself, and the connection is closed.
//! - **Stopping.** [`AdminServer::stop`] (or dropping the server) stops
//!   accepting, closes every open connection without waiting for clients,
//!   and joins the thread.
//!
//! # Why hyper
//!
//! An HTTP/1.1 request parser is easy to get almost right and hard to get
//! right (request smuggling through `Content-Length`/`Transfer-Encoding`,
//! pipelining, obsolete line folding, `HEAD` semantics). hyper is the parser
//! the Rust ecosystem runs in production and fuzzes, and it has the limits
//! we need built in (`header_read_timeout`, `max_buf_size`,
//! `max_header_size`). We take only its `http1` and `server` features and a
//! current-thread tokio runtime, so the cost is one thread and no HTTP/2,
//! TLS or client code.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tuning::admin::{AdminConfig, AdminServer, Handler, Response};
//!
//! struct Routes;
//! impl Handler for Routes {
//!     fn get(&self, path: &str) -> Option<Response> {
//!         match path {
//!             "/health" => Some(Response::text(200, "ok\n".to_string())),
//!             _ => None,
//!         }
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let addr = "127.0.0.1:9100".parse().unwrap();
//! if !tuning::admin::is_loopback(&addr) {
//!     eprintln!("turbo-dex: warning: admin endpoint {addr} is reachable from other hosts");
//! }
//! let server = AdminServer::start(AdminConfig::new(addr, "turbo-dex-admin"), Arc::new(Routes))?;
//! eprintln!("turbo-dex: admin endpoint on http://{}", server.local_addr());
//! // ... run the engine ...
//! server.stop();
//! # Ok(())
//! # }
//! ```

pub mod prom;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, oneshot};

/// Default for [`AdminConfig::max_connections`]: enough for a few scrapers,
/// health probes and a human with curl at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default for [`AdminConfig::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for [`AdminConfig::max_request_bytes`]: a GET with ordinary
/// headers is well under 1 KiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 8 * 1024;
/// hyper's smallest read buffer; the buffer limit is the larger of this and
/// [`AdminConfig::max_request_bytes`] (the head limit itself is exact).
const HYPER_MIN_BUF_BYTES: usize = 8 * 1024;
/// Pause after a failed `accept` (out of file descriptors, say), so the
/// admin thread does not spin on an error that persists.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Content type of [`Response::prometheus`]: text exposition format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of [`Response::json`].
pub const JSON_CONTENT_TYPE: &str = "application/json";
/// Content type of [`Response::text`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Where and how the admin endpoint listens, and its limits.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to bind; port 0 picks a free port (see
    /// [`AdminServer::local_addr`]).
    pub addr: SocketAddr,
    /// Connections served at once; more are closed as soon as accepted.
    /// Must be at least 1.
    pub max_connections: usize,
    /// Time a connection has to send a whole request head (from when the
    /// server starts waiting for it); after that it is closed.
    pub header_timeout: Duration,
    /// Largest request head (request line and headers) in bytes; a bigger
    /// one gets `431` and the connection is closed.
    pub max_request_bytes: usize,
    /// Name of the admin thread (shows in `top -H`, `perf`, panics).
    pub thread_name: String,
}

impl AdminConfig {
    /// `addr` and `thread_name` with the default limits:
    /// [`DEFAULT_MAX_CONNECTIONS`], [`DEFAULT_HEADER_TIMEOUT`] and
    /// [`DEFAULT_MAX_REQUEST_BYTES`].
    pub fn new(addr: SocketAddr, thread_name: &str) -> AdminConfig {
        AdminConfig {
            addr,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            thread_name: thread_name.to_string(),
        }
    }
}

/// What a [`Handler`] answers: status, content type and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status code (100..=999; an invalid one is sent as 500).
    pub status: u16,
    /// Value of the `Content-Type` header.
    pub content_type: &'static str,
    /// The body; `HEAD` requests get the headers only.
    pub body: String,
}

impl Response {
    /// A JSON body (`application/json`).
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: JSON_CONTENT_TYPE,
            body,
        }
    }

    /// A plain text body (`text/plain; charset=utf-8`).
    pub fn text(status: u16, body: String) -> Response {
        Response {
            status,
            content_type: TEXT_CONTENT_TYPE,
            body,
        }
    }

    /// `200` with a Prometheus text exposition body, as built by
    /// [`prom::Encoder`].
    pub fn prometheus(body: String) -> Response {
        Response {
            status: 200,
            content_type: PROMETHEUS_CONTENT_TYPE,
            body,
        }
    }
}

/// The routes of an admin endpoint.
pub trait Handler: Send + Sync + 'static {
    /// Called on the admin thread for every `GET` and `HEAD` request, with
    /// the path without its query string (`/metrics`). `None` answers
    /// `404`. It blocks the admin thread (and only it) while it runs, so it
    /// should read published counters, not wait for other threads.
    fn get(&self, path: &str) -> Option<Response>;

    /// Called on the admin thread for every `POST` request, with the path
    /// and the value of its `Authorization` header, if any (the handler
    /// checks it: the endpoint itself authenticates nothing). `None`
    /// answers `405`; the default has no POST routes. Like [`Self::get`],
    /// it must not wait for other threads.
    fn post(&self, _path: &str, _authorization: Option<&str>) -> Option<Response> {
        None
    }
}

/// The answer to one request: what [`Handler::get`] says for `GET`/`HEAD`,
/// `404` or `405` otherwise. Free of I/O, so routing is unit-tested without
/// a socket.
fn route(
    handler: &dyn Handler,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
) -> hyper::Response<Full<Bytes>> {
    let answer = if method == Method::POST {
        handler.post(path, authorization)
    } else {
        None
    };
    if method != Method::GET && method != Method::HEAD && answer.is_none() {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    let Some(answer) = answer.or_else(|| handler.get(path)) else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = hyper::Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    // Health and metrics are live readings: a proxy must not serve old ones.
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn plain(status: StatusCode, body: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
    response
}

/// True for addresses only this host can reach (loopback, including an
/// IPv4-mapped `::ffff:127.0.0.1`); callers warn when binding elsewhere,
/// since the endpoint has no authentication.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// A running admin endpoint. Dropping it stops it like [`AdminServer::stop`].
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Binds `cfg.addr` and serves `handler` on a new thread named
    /// `cfg.thread_name`. That thread is not pinned: it runs wherever the
    /// OS puts it (within the affinity of the calling thread), and callers
    /// pin nothing to it.
    ///
    /// Errors: binding fails (address in use, not an address of this host,
    /// a port below 1024 without the privilege), or the thread or runtime
    /// cannot be created; the message names the address.
    pub fn start(cfg: AdminConfig, handler: Arc<dyn Handler>) -> io::Result<AdminServer> {
        assert!(
            cfg.max_connections >= 1,
            "AdminConfig::max_connections is 0"
        );
        let addr = cfg.addr;
        let context = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("admin endpoint {addr}: {what}: {e}"))
        };
        // Bind on the caller's thread so that "address in use" is an error
        // of `start`, not a message from a thread nobody watches.
        let listener = std::net::TcpListener::bind(addr).map_err(|e| {
            let hint = match e.kind() {
                io::ErrorKind::AddrInUse => {
                    "; another process (or another instance) holds it: stop it or choose another port"
                }
                io::ErrorKind::AddrNotAvailable => "; it is not an address of this host",
                io::ErrorKind::PermissionDenied => {
                    "; ports below 1024 need CAP_NET_BIND_SERVICE: choose a higher port"
                }
                _ => "",
            };
            io::Error::new(
                e.kind(),
                format!("admin endpoint: cannot bind {addr}: {e}{hint}"),
            )
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| context("set_nonblocking", e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| context("local_addr", e))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| context("cannot build the tokio runtime", e))?;
        let (shutdown, stopped) = oneshot::channel();
        let limits = Limits::of(&cfg);
        let thread = std::thread::Builder::new()
            .name(cfg.thread_name.clone())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, limits, handler, stopped).await,
                        Err(e) => {
                            eprintln!("admin endpoint {local_addr}: cannot register listener: {e}")
                        }
                    }
                });
                // Dropping the runtime drops every connection task, which
                // closes their sockets: stop does not wait for clients.
                drop(runtime);
            })
            .map_err(|e| context("cannot spawn the admin thread", e))?;
        Ok(AdminServer {
            local_addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address the server listens on (with the port chosen when
    /// [`AdminConfig::addr`] had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, closes every connection (in-flight responses are
    /// cut off) and joins the admin thread.
    pub fn stop(mut self) {
        self.shutdown_and_join();
    }

    fn shutdown_and_join(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // An error means the thread has already ended.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            // The panic message went to stderr already; the endpoint
            // is a side show, so stopping it never takes the caller down.
            eprintln!(
                "admin endpoint {}: the admin thread panicked",
                self.local_addr
            );
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.shutdown_and_join();
    }
}

/// The parts of [`AdminConfig`] the serving thread needs.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
    max_request_bytes: usize,
}

impl Limits {
    fn of(cfg: &AdminConfig) -> Limits {
        Limits {
            max_connections: cfg.max_connections,
            header_timeout: cfg.header_timeout,
            max_request_bytes: cfg.max_request_bytes,
        }
    }
}

/// Accepts until `stopped` fires (or its sender is dropped), serving each
/// connection as a task on this thread's runtime.
async fn serve(
    listener: tokio::net::TcpListener,
    limits: Limits,
    handler: Arc<dyn Handler>,
    mut stopped: oneshot::Receiver<()>,
) {
    let local_addr = listener.local_addr().ok();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_request_bytes)
        .max_buf_size(limits.max_request_bytes.max(HYPER_MIN_BUF_BYTES))
        .keep_alive(true);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: the condition may last; back off
                // instead of spinning. Per-connection errors (ECONNABORTED)
                // also land here and cost one pause.
                if let Some(addr) = local_addr {
                    eprintln!("admin endpoint {addr}: accept: {e}");
                }
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            // Over the limit: close at once, read nothing.
            drop(stream);
            continue;
        };
        // Small responses: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let handler = Arc::clone(&handler);
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let authorization = request
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            let response = route(
                &*handler,
                request.method(),
                request.uri().path(),
                authorization,
            );
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        tokio::spawn(async move {
            // Errors (timeouts, malformed requests, resets) end this
            // connection only; hyper has already answered what it could.
            let _ = connection.await;
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Routes;
    impl Handler for Routes {
        fn get(&self, path: &str) -> Option<Response> {
            match path {
                "/health" => Some(Response::text(200, "ok\n".to_string())),
                "/stats" => Some(Response::json(200, "{\"orders\":1}".to_string())),
                "/bad" => Some(Response::text(42, String::new())),
                _ => None,
            }
        }

        fn post(&self, path: &str, authorization: Option<&str>) -> Option<Response> {
            (path == "/act").then(|| Response::text(202, format!("{authorization:?}")))
        }
    }

    fn body(response: hyper::Response<Full<Bytes>>) -> String {
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect())
            .unwrap();
        String::from_utf8(collected.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn get_and_head_go_to_the_handler() {
        for method in [Method::GET, Method::HEAD] {
            let response = route(&Routes, &method, "/stats", None);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[CONTENT_TYPE], JSON_CONTENT_TYPE);
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
            assert_eq!(body(response), "{\"orders\":1}");
        }
    }

    #[test]
    fn unknown_path_is_404() {
        let response = route(&Routes, &Method::GET, "/nope", None);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        assert_eq!(body(response), "not found\n");
    }

    #[test]
    fn other_methods_are_405_with_allow() {
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let response = route(&Routes, &method, "/health", None);
            assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
            assert_eq!(response.headers()[ALLOW], "GET, HEAD");
        }
    }

    #[test]
    fn post_goes_to_the_handler_with_the_authorization_header() {
        let response = route(&Routes, &Method::POST, "/act", Some("Bearer x"));
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        assert_eq!(body(response), "Some(\"Bearer x\")");
        // A path without a POST route is 405, as before.
        let response = route(&Routes, &Method::POST, "/stats", None);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[test]
    fn invalid_status_from_the_handler_is_500() {
        let response = route(&Routes, &Method::GET, "/bad", None);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn loopback_addresses() {
        for addr in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(&addr.parse().unwrap()), "{addr}");
        }
        for addr in ["0.0.0.0:1", "10.0.0.1:1", "[::]:1", "[2001:db8::1]:1"] {
            assert!(!is_loopback(&addr.parse().unwrap()), "{addr}");
        }
    }

    #[test]
    fn config_defaults() {
        let cfg = AdminConfig::new("127.0.0.1:0".parse().unwrap(), "t-admin");
        assert_eq!(cfg.max_connections, 64);
        assert_eq!(cfg.header_timeout, Duration::from_secs(5));
        assert_eq!(cfg.max_request_bytes, 8192);
        assert_eq!(cfg.thread_name, "t-admin");
    }
}
