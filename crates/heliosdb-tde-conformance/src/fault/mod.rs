//! [`FaultProxy`]: a TCP proxy on `127.0.0.1:0` in front of a test server (OpenBao, moto, an
//! Azure emulator) that makes the outages a remote MEK provider must survive: a cut network
//! ([`FaultProxy::cut`], [`FaultProxy::restore`], [`FaultProxy::cut_after_requests`]), a slow
//! one ([`FaultProxy::delay`]) and, for plain-HTTP upstreams, answers the server never gives on
//! demand (a 503, a 429 with `Retry-After`, a JSON error: [`FaultProxy::respond_next`]),
//! with a log of the requests made ([`FaultProxy::requests`]).
//!
//! AWS JSON-protocol services (KMS, and moto in the tests) take every call as `POST /` with
//! the action in the `X-Amz-Target` header (`TrentService.ReEncrypt`): the log records that
//! header ([`FaultProxy::request_log`]), [`FaultProxy::requests_for_target`] counts calls of
//! one action, and [`FaultProxy::respond_next_for_target`] answers the next calls of one
//! action, for example with a throttling error ([`Response::aws_error`]). The proxy forwards
//! each request as it comes and mirrors the upstream's connection handling: an upstream that
//! closes the connection after every answer (moto sends `Connection: close`) closes the
//! client's connection too, as it would without the proxy, so the client opens a new one
//! for its next call.
//!
//! ```no_run
//! # use heliosdb_tde_conformance::fault::{FaultProxy, Response};
//! # async fn demo(upstream: std::net::SocketAddr) -> std::io::Result<()> {
//! let proxy = FaultProxy::start_http(upstream).await?;
//! // Point the provider at `proxy.url()` instead of the server, then:
//! proxy.respond_next(2, Response::too_many_requests(1));
//! proxy.cut(); // every open connection dropped, new ones refused
//! proxy.restore();
//! assert!(proxy.requests_to("/v1/transit/rewrap/") > 0);
//! // In front of an AWS JSON-protocol endpoint:
//! proxy.respond_next_for_target(
//!     "Encrypt",
//!     2,
//!     Response::aws_error(400, "ThrottlingException", "Rate exceeded"),
//! );
//! assert_eq!(proxy.requests_for_target("Decrypt"), 0);
//! # Ok(()) }
//! ```
//!
//! Build and use a proxy inside one Tokio runtime (it spawns its tasks there); dropping it
//! stops them and closes its port.

mod http;
mod response;
mod tcp;

pub use http::LoggedRequest;
pub use response::Response;

use http::{Canned, Matcher, target_is};
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The state the proxy's tasks share.
struct Shared {
    addr: SocketAddr,
    upstream: SocketAddr,
    http: bool,
    cut: AtomicBool,
    /// Requests (connections for a raw proxy) still let through before a cut.
    cut_after: Mutex<Option<u64>>,
    delay: Mutex<Duration>,
    canned: Mutex<VecDeque<Canned>>,
    log: Mutex<Vec<LoggedRequest>>,
    connections: AtomicU64,
    listener: Mutex<Option<Arc<TcpListener>>>,
    listener_changed: tokio::sync::Notify,
    tasks: Mutex<JoinSet<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn spawn<F>(&self, f: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(f);
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        *lock(&self.listener) = None;
        self.listener_changed.notify_one();
        lock(&self.tasks).abort_all();
    }

    /// Counts one request (or raw connection) and says whether it may pass.
    fn admit(&self) -> bool {
        if self.cut.load(Ordering::SeqCst) {
            return false;
        }
        let mut after = lock(&self.cut_after);
        match after.as_mut() {
            Some(0) => {
                *after = None;
                drop(after);
                self.cut();
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    fn delay(&self) -> Duration {
        *lock(&self.delay)
    }

    fn take_canned(&self, path: &str, target: Option<&str>) -> Option<Response> {
        let mut canned = lock(&self.canned);
        let i = canned
            .iter()
            .position(|c| c.matcher.matches(path, target))?;
        let c = &mut canned[i];
        c.left -= 1;
        let response = c.response.clone();
        if c.left == 0 {
            canned.remove(i);
        }
        Some(response)
    }
}

/// A fault-injecting TCP proxy on `127.0.0.1:0` in front of one upstream address (see the
/// module documentation). Dropping it stops it.
pub struct FaultProxy {
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.shared.addr)
            .field("upstream", &self.shared.upstream)
            .field("http", &self.shared.http)
            .field("cut", &self.is_cut())
            .finish_non_exhaustive()
    }
}

impl FaultProxy {
    /// A proxy forwarding bytes unparsed (for TLS upstreams): cuts and delays work; requests
    /// are not logged and [`FaultProxy::cut_after_requests`] counts connections.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        Self::start_with(upstream, false).await
    }

    /// A proxy for a plain-HTTP/1.1 upstream: it also parses request heads, logs method and
    /// path, counts requests and can answer them itself ([`FaultProxy::respond_next`]).
    pub async fn start_http(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        Self::start_with(upstream, true).await
    }

    async fn start_with(upstream: SocketAddr, http: bool) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let shared = Arc::new(Shared {
            addr: listener.local_addr()?,
            upstream,
            http,
            cut: AtomicBool::new(false),
            cut_after: Mutex::new(None),
            delay: Mutex::new(Duration::ZERO),
            canned: Mutex::new(VecDeque::new()),
            log: Mutex::new(Vec::new()),
            connections: AtomicU64::new(0),
            listener: Mutex::new(Some(Arc::new(listener))),
            listener_changed: tokio::sync::Notify::new(),
            tasks: Mutex::new(JoinSet::new()),
        });
        let accept = tokio::spawn(tcp::accept_loop(shared.clone()));
        Ok(FaultProxy { shared, accept })
    }

    /// The proxy's address (give it to the client instead of the upstream's).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The upstream address.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Drops every open connection and refuses new ones (the port is closed) until
    /// [`FaultProxy::restore`].
    pub fn cut(&self) {
        self.shared.cut();
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// Ends a cut: the same port accepts connections again as soon as this returns. Also
    /// cancels a pending [`FaultProxy::cut_after_requests`]. Call it inside the runtime.
    ///
    /// # Panics
    ///
    /// If the port cannot be bound again (another process took it meanwhile).
    pub fn restore(&self) {
        *lock(&self.shared.cut_after) = None;
        if self.shared.cut.swap(false, Ordering::SeqCst) {
            let std = std::net::TcpListener::bind(self.shared.addr)
                .unwrap_or_else(|e| panic!("fault proxy: cannot bind {} again: {e}", self.addr()));
            std.set_nonblocking(true).expect("non-blocking listener");
            let listener = TcpListener::from_std(std).expect("listener inside the runtime");
            *lock(&self.shared.listener) = Some(Arc::new(listener));
            self.shared.listener_changed.notify_one();
        }
    }

    /// Lets `n` more requests through (connections for a raw proxy), then cuts, as
    /// [`FaultProxy::cut`] does, at the next one (which fails).
    pub fn cut_after_requests(&self, n: u64) {
        *lock(&self.shared.cut_after) = Some(n);
    }

    /// Delays every request (every chunk of client bytes for a raw proxy) by `delay` before it
    /// is forwarded; `Duration::ZERO` ends that.
    pub fn delay(&self, delay: Duration) {
        *lock(&self.shared.delay) = delay;
    }

    /// Answers the next `n` requests with `response` instead of forwarding them (plain-HTTP
    /// proxies only). Answers queued earlier are given first.
    pub fn respond_next(&self, n: usize, response: Response) {
        self.respond_next_to("", n, response);
    }

    /// Answers the next `n` requests whose path contains `path_fragment` with `response`.
    pub fn respond_next_to(&self, path_fragment: &str, n: usize, response: Response) {
        self.queue(Matcher::Path(path_fragment.to_string()), n, response);
    }

    /// Answers the next `n` requests for the AWS action `action` (their `X-Amz-Target` is
    /// `action` or ends with `.<action>`: `"ReEncrypt"` matches `TrentService.ReEncrypt`, not
    /// `TrentService.Encrypt`) with `response`, for example
    /// `Response::aws_error(400, "ThrottlingException", "Rate exceeded")`. Other requests pass.
    pub fn respond_next_for_target(&self, action: &str, n: usize, response: Response) {
        self.queue(Matcher::Target(action.to_string()), n, response);
    }

    fn queue(&self, matcher: Matcher, n: usize, response: Response) {
        if n > 0 {
            lock(&self.shared.canned).push_back(Canned {
                matcher,
                left: n,
                response,
            });
        }
    }

    /// Drops the answers still queued by [`FaultProxy::respond_next`].
    pub fn clear_responses(&self) {
        lock(&self.shared.canned).clear();
    }

    /// Every request seen so far, as (method, path without the query), in order, including
    /// those refused by a cut or answered by the proxy (plain-HTTP proxies only).
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.shared.log)
            .iter()
            .map(|r| (r.method.clone(), r.path.clone()))
            .collect()
    }

    /// Every request seen so far with its `X-Amz-Target` header, in order, as
    /// [`FaultProxy::requests`] counts them.
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        lock(&self.shared.log).clone()
    }

    /// How many requests seen so far have a path containing `path_fragment`.
    pub fn requests_to(&self, path_fragment: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| r.path.contains(path_fragment))
            .count()
    }

    /// How many requests seen so far were for the AWS action `action`: their `X-Amz-Target`
    /// is `action` or ends with `.<action>` (`"ReEncrypt"` counts `TrentService.ReEncrypt`
    /// and not `TrentService.Encrypt`). Includes requests refused by a cut or answered by the
    /// proxy.
    pub fn requests_for_target(&self, action: &str) -> usize {
        lock(&self.shared.log)
            .iter()
            .filter(|r| {
                r.amz_target
                    .as_deref()
                    .is_some_and(|t| target_is(t, action))
            })
            .count()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.log).clear();
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        *lock(&self.shared.listener) = None;
        lock(&self.shared.tasks).abort_all();
    }
}
