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

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// Largest request head the proxy parses; a longer one is passed through unparsed.
const MAX_HEAD: usize = 64 * 1024;

/// A response the proxy gives instead of the upstream ([`FaultProxy::respond_next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Response {
    /// The HTTP status code.
    pub status: u16,
    /// Header lines (a `content-length` is added).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response with `status`, no header and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    #[must_use]
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// A JSON body, with `content-type: application/json` unless a content type was set
    /// already (`.header("Content-Type", "application/x-amz-json-1.1").json(...)` keeps the
    /// AWS one).
    #[must_use]
    pub fn json(self, json: &str) -> Self {
        let typed = self
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        let r = if typed {
            self
        } else {
            self.header("content-type", "application/json")
        };
        r.body(json.as_bytes().to_vec())
    }

    /// An AWS JSON-protocol error as KMS gives it: `status`, `content-type:
    /// application/x-amz-json-1.1`, the error type in `x-amzn-errortype` and the body
    /// `{"__type":"<error_type>","message":"<message>"}` (for example `400`,
    /// `ThrottlingException`, `Rate exceeded`; or `500`, `KMSInternalException`).
    pub fn aws_error(status: u16, error_type: &str, message: &str) -> Self {
        let body = format!(
            r#"{{"__type":"{}","message":"{}"}}"#,
            json_escape(error_type),
            json_escape(message)
        );
        Self::new(status)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", error_type)
            .header("x-amzn-requestid", "fault-proxy")
            .json(&body)
    }

    /// 503 Service Unavailable with a Vault-style JSON error body.
    pub fn service_unavailable() -> Self {
        Self::new(503).json(r#"{"errors":["service unavailable (fault proxy)"]}"#)
    }

    /// 429 Too Many Requests with `Retry-After: <seconds>`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        Self::new(429)
            .header("retry-after", &retry_after_secs.to_string())
            .json(r#"{"errors":["rate limit exceeded (fault proxy)"]}"#)
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Fault Proxy",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str(&format!("content-length: {}\r\n\r\n", self.body.len()));
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// A JSON string's contents for `s` (quotes, backslashes and control characters escaped).
fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// One request the proxy saw ([`FaultProxy::request_log`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LoggedRequest {
    /// The method (`POST`).
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The `X-Amz-Target` header (`TrentService.Encrypt`), if the request had one.
    pub amz_target: Option<String>,
}

/// Whether the `X-Amz-Target` value `target` names `action`: the whole value, or the part
/// after its last dot (`TrentService.ReEncrypt` is `ReEncrypt`, and not `Encrypt`).
fn target_is(target: &str, action: &str) -> bool {
    target == action || target.rsplit('.').next() == Some(action)
}

/// Which requests a canned response applies to.
#[derive(Debug)]
enum Matcher {
    /// Paths containing this fragment (`""`: any request).
    Path(String),
    /// Requests whose `X-Amz-Target` names this action.
    Target(String),
}

impl Matcher {
    fn matches(&self, path: &str, target: Option<&str>) -> bool {
        match self {
            Matcher::Path(fragment) => path.contains(fragment.as_str()),
            Matcher::Target(action) => target.is_some_and(|t| target_is(t, action)),
        }
    }
}

/// Responses waiting to be given, with the requests they apply to.
#[derive(Debug)]
struct Canned {
    matcher: Matcher,
    left: usize,
    response: Response,
}

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
        let accept = tokio::spawn(accept_loop(shared.clone()));
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

async fn accept_loop(shared: Arc<Shared>) {
    loop {
        let listener = lock(&shared.listener).clone();
        let Some(listener) = listener else {
            shared.listener_changed.notified().await;
            continue;
        };
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    if shared.cut.load(Ordering::SeqCst) {
                        continue;
                    }
                    let _ = client.set_nodelay(true);
                    let s = shared.clone();
                    if shared.http {
                        shared.spawn(http_connection(s, client));
                    } else if shared.admit() {
                        shared.spawn(raw_connection(s, client));
                    }
                }
            }
            () = shared.listener_changed.notified() => {}
        }
    }
}

/// The client's side of one connection and the upstream connection behind it (made at the
/// first request that is forwarded).
struct Conn {
    shared: Arc<Shared>,
    client: OwnedReadHalf,
    to_client: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    upstream: Option<OwnedWriteHalf>,
    /// Cleared when the upstream closed its side (after an answer with `Connection: close`,
    /// as moto gives to every call); the client's side has been closed then too.
    upstream_open: Arc<AtomicBool>,
}

impl Conn {
    fn new(shared: Arc<Shared>, client: TcpStream) -> Self {
        let (client, to_client) = client.into_split();
        Self {
            shared,
            client,
            to_client: Arc::new(tokio::sync::Mutex::new(to_client)),
            upstream: None,
            upstream_open: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sends `bytes` upstream, connecting first if needed (the upstream's answers are copied
    /// back to the client by a task of their own). Fails once the upstream has closed the
    /// connection: the client's side is closed too, and a request sent on it meanwhile is
    /// dropped, as the upstream would have dropped it.
    async fn forward(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.upstream.is_some() && !self.upstream_open.load(Ordering::SeqCst) {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        }
        if self.upstream.is_none() {
            let up = TcpStream::connect(self.shared.upstream).await?;
            let _ = up.set_nodelay(true);
            let (mut from_up, to_up) = up.into_split();
            let to_client = self.to_client.clone();
            let open = self.upstream_open.clone();
            open.store(true, Ordering::SeqCst);
            self.shared.spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match from_up.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if to_client.lock().await.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                open.store(false, Ordering::SeqCst);
                let _ = to_client.lock().await.shutdown().await;
            });
            self.upstream = Some(to_up);
        }
        match self.upstream.as_mut() {
            Some(up) => up.write_all(bytes).await,
            None => Ok(()),
        }
    }

    /// Copies the client's bytes upstream unparsed (after `first`) until either side closes.
    async fn pass_through(&mut self, first: &[u8]) {
        if !first.is_empty() && self.forward(first).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match self.client.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if self.shared.cut.load(Ordering::SeqCst) {
                return;
            }
            let delay = self.shared.delay();
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if self.forward(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

async fn raw_connection(shared: Arc<Shared>, client: TcpStream) {
    let mut conn = Conn::new(shared, client);
    // Connect at once, so a TLS client's handshake reaches the server.
    if conn.forward(&[]).await.is_ok() {
        conn.pass_through(&[]).await;
    }
}

/// What the proxy needs of a request head.
struct Head {
    method: String,
    path: String,
    amz_target: Option<String>,
    content_length: usize,
    chunked: bool,
}

fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?;
    if !first.next()?.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut content_length = 0;
    let mut chunked = false;
    let mut amz_target = None;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = value.parse().ok()?;
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("x-amz-target") {
                amz_target = Some(value.to_string());
            }
        }
    }
    Some(Head {
        method,
        path,
        amz_target,
        content_length,
        chunked,
    })
}

async fn http_connection(shared: Arc<Shared>, client: TcpStream) {
    let mut conn = Conn::new(shared.clone(), client);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        // One request head.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                return conn.pass_through(&buf).await;
            }
            match conn.client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(head) = parse_head(&buf[..head_end]) else {
            return conn.pass_through(&buf).await;
        };
        lock(&shared.log).push(LoggedRequest {
            method: head.method.clone(),
            path: head.path.clone(),
            amz_target: head.amz_target.clone(),
        });
        if !shared.admit() {
            return;
        }
        let delay = shared.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if head.chunked {
            // A streamed body: forwarded unparsed, with the rest of the connection.
            return conn.pass_through(&buf).await;
        }
        while buf.len() < head_end + head.content_length {
            match conn.client.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..head_end + head.content_length).collect();
        if let Some(response) = shared.take_canned(&head.path, head.amz_target.as_deref()) {
            let mut w = conn.to_client.lock().await;
            if w.write_all(&response.encode()).await.is_err() {
                return;
            }
            continue;
        }
        if conn.forward(&request).await.is_err() {
            return;
        }
    }
}
