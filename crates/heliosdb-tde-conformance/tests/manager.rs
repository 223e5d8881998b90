//! The key-manager checks (feature `manager`) against the in-memory provider, and the outage
//! checks against a provider that needs the network: the in-memory provider behind a gate that
//! makes one HTTP request per call, through a [`FaultProxy`], to a tiny server written here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use async_trait::async_trait;
use heliosdb_tde_conformance::fault::FaultProxy;
use heliosdb_tde_conformance::manager;
use heliosdb_tde_core::{
    EncryptionAlgorithm, KeyState, MekId, MekInfo, MekProvider, MekRef, MekVersionInfo,
    ProviderHealth, ProviderKind, Result, TableKey, TdeError, WrapContext, WrappedTek,
};
use heliosdb_tde_memory::InMemoryMekProvider;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_cold_cache_over_the_in_memory_provider() {
    manager::single_flight_cold_cache(Arc::new(InMemoryMekProvider::new())).await;
}

#[tokio::test]
async fn rotation_with_manager_over_the_in_memory_provider() {
    manager::rotation_with_manager(Arc::new(InMemoryMekProvider::new())).await;
}

/// A server answering every HTTP request with an empty 200.
async fn ok_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                loop {
                    while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..i + 4);
                        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if s.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// The in-memory provider, reachable only over the network: every call first makes one HTTP
/// request (`POST /<method>`, a fresh connection) to `addr`, and fails with a retryable
/// `ProviderUnavailable` if that request fails, as a remote provider would.
#[derive(Debug)]
struct Networked {
    inner: InMemoryMekProvider,
    addr: SocketAddr,
}

impl Networked {
    async fn reach(&self, method: &str) -> Result<()> {
        let call = async {
            let mut s = TcpStream::connect(self.addr).await?;
            let req = format!("POST /{method} HTTP/1.1\r\nhost: test\r\ncontent-length: 0\r\n\r\n");
            s.write_all(req.as_bytes()).await?;
            let mut head = Vec::new();
            let mut chunk = [0u8; 256];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
                }
                head.extend_from_slice(&chunk[..n]);
            }
            if head.starts_with(b"HTTP/1.1 200") {
                Ok(())
            } else {
                Err(std::io::Error::other("not a 200"))
            }
        };
        call.await.map_err(|e| TdeError::ProviderUnavailable {
            provider: self.description(),
            reason: format!("{method}: {e}"),
            retryable: true,
        })
    }
}

#[async_trait]
impl MekProvider for Networked {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }
    fn description(&self) -> String {
        format!("networked test provider at {}", self.addr)
    }
    fn is_secure(&self) -> bool {
        false
    }
    async fn generate_mek(&self, id: &MekId, a: EncryptionAlgorithm) -> Result<MekVersionInfo> {
        self.reach("generate_mek").await?;
        self.inner.generate_mek(id, a).await
    }
    async fn wrap_tek(&self, m: &MekRef, t: &TableKey, c: &WrapContext) -> Result<WrappedTek> {
        self.reach("wrap_tek").await?;
        self.inner.wrap_tek(m, t, c).await
    }
    async fn unwrap_tek(&self, w: &WrappedTek, c: &WrapContext) -> Result<TableKey> {
        self.reach("unwrap_tek").await?;
        self.inner.unwrap_tek(w, c).await
    }
    async fn rewrap_tek(
        &self,
        w: &WrappedTek,
        c: &WrapContext,
        new: &MekRef,
    ) -> Result<WrappedTek> {
        // One request, as a server-side rewrap.
        self.reach("rewrap_tek").await?;
        self.inner.rewrap_tek(w, c, new).await
    }
    async fn mek_info(&self, id: &MekId) -> Result<MekInfo> {
        self.reach("mek_info").await?;
        self.inner.mek_info(id).await
    }
    async fn list_meks(&self) -> Result<Vec<MekId>> {
        self.reach("list_meks").await?;
        self.inner.list_meks().await
    }
    async fn rotate_mek(&self, id: &MekId) -> Result<MekVersionInfo> {
        self.reach("rotate_mek").await?;
        self.inner.rotate_mek(id).await
    }
    async fn set_mek_state(&self, m: &MekRef, s: KeyState) -> Result<()> {
        self.reach("set_mek_state").await?;
        self.inner.set_mek_state(m, s).await
    }
    async fn deactivate_mek_version(&self, m: &MekRef) -> Result<()> {
        self.reach("deactivate_mek_version").await?;
        self.inner.deactivate_mek_version(m).await
    }
    async fn health(&self) -> Result<ProviderHealth> {
        self.reach("health").await?;
        self.inner.health().await
    }
}

async fn networked() -> (Arc<Networked>, FaultProxy) {
    let proxy = FaultProxy::start_http(ok_server().await).await.unwrap();
    let p = Arc::new(Networked {
        inner: InMemoryMekProvider::new(),
        addr: proxy.addr(),
    });
    (p, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_and_recovery_over_a_networked_provider() {
    let (p, proxy) = networked().await;
    manager::outage_and_recovery(p, &proxy).await;
    assert!(proxy.requests_to("/unwrap_tek") > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_survives_outage_over_a_networked_provider() {
    let (p, proxy) = networked().await;
    manager::rotation_survives_outage(p, &proxy).await;
    // Every TEK went through a re-wrap request; no unwrap or wrap was used for the rotation.
    assert!(
        proxy.requests_to("/rewrap_tek") >= manager::OUTAGE_ROTATION_TEKS,
        "{}",
        proxy.requests_to("/rewrap_tek")
    );
}
