//! The TCP side of the proxy: the accept loop, and each client connection with the upstream
//! connection behind it (forwarding, pass-through of unparsed bytes, raw proxying).

use super::http::http_connection;
use super::{Shared, lock};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

pub(super) async fn accept_loop(shared: Arc<Shared>) {
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
pub(super) struct Conn {
    shared: Arc<Shared>,
    pub(super) client: OwnedReadHalf,
    pub(super) to_client: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    upstream: Option<OwnedWriteHalf>,
    /// Cleared when the upstream closed its side (after an answer with `Connection: close`,
    /// as moto gives to every call); the client's side has been closed then too.
    upstream_open: Arc<AtomicBool>,
}

impl Conn {
    pub(super) fn new(shared: Arc<Shared>, client: TcpStream) -> Self {
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
    pub(super) async fn forward(&mut self, bytes: &[u8]) -> std::io::Result<()> {
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
    pub(super) async fn pass_through(&mut self, first: &[u8]) {
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
