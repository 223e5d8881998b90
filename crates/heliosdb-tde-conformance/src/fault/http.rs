//! The plain-HTTP side of the proxy: request heads parsed and logged ([`LoggedRequest`]),
//! the queue of canned answers and which requests they apply to, and the loop that answers or
//! forwards each request of a connection.

use super::tcp::Conn;
use super::{Response, Shared, lock};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest request head the proxy parses; a longer one is passed through unparsed.
const MAX_HEAD: usize = 64 * 1024;

/// One request the proxy saw
/// ([`FaultProxy::request_log`](super::FaultProxy::request_log)).
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
pub(super) fn target_is(target: &str, action: &str) -> bool {
    target == action || target.rsplit('.').next() == Some(action)
}

/// Which requests a canned response applies to.
#[derive(Debug)]
pub(super) enum Matcher {
    /// Paths containing this fragment (`""`: any request).
    Path(String),
    /// Requests whose `X-Amz-Target` names this action.
    Target(String),
}

impl Matcher {
    pub(super) fn matches(&self, path: &str, target: Option<&str>) -> bool {
        match self {
            Matcher::Path(fragment) => path.contains(fragment.as_str()),
            Matcher::Target(action) => target.is_some_and(|t| target_is(t, action)),
        }
    }
}

/// Responses waiting to be given, with the requests they apply to.
#[derive(Debug)]
pub(super) struct Canned {
    pub(super) matcher: Matcher,
    pub(super) left: usize,
    pub(super) response: Response,
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

pub(super) async fn http_connection(shared: Arc<Shared>, client: TcpStream) {
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
