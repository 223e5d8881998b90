//! [`ProviderSet`]: the configured MEK provider plus, during a provider migration, the previous
//! one, behind the one [`MekProvider`] trait.
//!
//! The key manager and everything below it keep working on an `Arc<dyn MekProvider>`; during a
//! migration that provider is a set of two:
//!
//! * **the target** (the configured provider) holds the MEK new TEKs are wrapped under; every
//!   call that names another MEK than the source's goes to it, and so does `generate_mek`;
//! * **the source** (the previous provider, `migration_source` in the configuration) holds the
//!   MEK the existing TEKs are still wrapped under; calls that name the source's MEK id go to
//!   it, and an unwrap goes to it when the envelope names that MEK.
//!
//! The two are told apart by MEK id, which is why their MEK ids must differ: the key store,
//! the rotation journal and the key check values all name an MEK version by id and version,
//! and only an id that differs keeps a source wrap and a target wrap apart everywhere. An
//! envelope routed to one provider must also carry that provider's kind, so a source wrap
//! presented under the target's identity (or the reverse) is refused before any provider call.

use crate::aad::WrapContext;
use crate::envelope::{ProviderKind, WrappedTek};
use crate::error::{Result, TdeError};
use crate::ids::{MekId, MekRef};
use crate::material::TableKey;
use crate::metadata::{EncryptionAlgorithm, KeyState};
use crate::provider::{MekBackupItem, MekInfo, MekProvider, MekVersionInfo, ProviderHealth};
use async_trait::async_trait;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

/// Which member of a [`ProviderSet`] a call goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Member {
    /// The configured provider: new wraps, and every MEK but the source's.
    Target,
    /// The previous provider, during a migration: the source's MEK.
    Source,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Member::Target => "target",
            Member::Source => "source",
        })
    }
}

/// The refusal of a migration source whose MEK id is the target's
/// ([`TdeError::InvalidConfig`] on `migration_source`): with the same provider (`same_place`,
/// `source` describing it) there is nothing to migrate; with another provider the key store
/// could not tell the two MEKs' wraps apart.
pub fn shared_mek_id(
    same_place: bool,
    source: &str,
    source_kind: &str,
    target_kind: &str,
    mek: &MekId,
) -> TdeError {
    let reason = if same_place {
        format!(
            "it names the same provider ({source}) and the same MEK ({mek}) as the \
             configuration itself, so there is nothing to migrate; describe the previous \
             provider in migration_source and the new one in the main sections"
        )
    } else {
        format!(
            "the source ({source_kind}) and the target ({target_kind}) both use the MEK id \
             {mek}; give the target its own default_mek_id (for example {mek}_{}), because the \
             key store tells a source wrap from a target wrap by MEK id",
            target_kind.replace('-', "_")
        )
    };
    TdeError::InvalidConfig {
        field: "migration_source".into(),
        reason,
    }
}

/// The configured MEK provider plus the previous one during a provider migration (see the
/// module documentation). It is itself a [`MekProvider`].
pub struct ProviderSet {
    target: Arc<dyn MekProvider>,
    target_mek: MekId,
    source: Arc<dyn MekProvider>,
    source_mek: MekId,
}

impl fmt::Debug for ProviderSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSet")
            .field("target", &self.target)
            .field("target_mek", &self.target_mek)
            .field("source", &self.source)
            .field("source_mek", &self.source_mek)
            .finish()
    }
}

impl ProviderSet {
    /// A set of `target` (whose MEK is `target_mek`) and `source` (whose MEK is `source_mek`).
    ///
    /// Refused ([`TdeError::InvalidConfig`] on `migration_source`) when the two MEK ids are
    /// equal: with the same provider that is no migration at all, and with another provider
    /// the key store could not tell the two MEKs' wraps apart.
    pub fn new(
        target: Arc<dyn MekProvider>,
        target_mek: MekId,
        source: Arc<dyn MekProvider>,
        source_mek: MekId,
    ) -> Result<Self> {
        if target_mek == source_mek {
            return Err(shared_mek_id(
                target.kind() == source.kind(),
                &source.kind().to_string(),
                source.kind().name(),
                target.kind().name(),
                &source_mek,
            ));
        }
        Ok(Self {
            target,
            target_mek,
            source,
            source_mek,
        })
    }

    /// The configured provider.
    pub fn target(&self) -> &Arc<dyn MekProvider> {
        &self.target
    }

    /// The previous provider.
    pub fn source(&self) -> &Arc<dyn MekProvider> {
        &self.source
    }

    /// The MEK id new TEKs are wrapped under (the target's).
    pub fn target_mek(&self) -> &MekId {
        &self.target_mek
    }

    /// The MEK id of the source.
    pub fn source_mek(&self) -> &MekId {
        &self.source_mek
    }

    /// Which member holds MEK `id`.
    pub fn member_for(&self, id: &MekId) -> Member {
        if *id == self.source_mek {
            Member::Source
        } else {
            Member::Target
        }
    }

    /// The provider of `member`.
    pub fn provider(&self, member: Member) -> &Arc<dyn MekProvider> {
        match member {
            Member::Target => &self.target,
            Member::Source => &self.source,
        }
    }

    fn for_id(&self, id: &MekId) -> &Arc<dyn MekProvider> {
        self.provider(self.member_for(id))
    }

    /// The member an envelope belongs to: by its MEK id, and its provider kind must be that
    /// member's, or the envelope is refused.
    fn for_envelope(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<Member> {
        let member = self.member_for(&wrapped.mek.id);
        let expected = self.provider(member).kind();
        if wrapped.provider != expected {
            return Err(TdeError::AuthenticationFailed {
                what: format!(
                    "TEK {} wrapped by {}: the envelope names the provider {} but the MEK {} \
                     belongs to the migration's {member} provider ({expected})",
                    ctx.tek_id(),
                    wrapped.mek,
                    wrapped.provider,
                    wrapped.mek.id
                ),
            });
        }
        Ok(member)
    }
}

#[async_trait]
impl MekProvider for ProviderSet {
    fn kind(&self) -> ProviderKind {
        self.target.kind()
    }

    fn description(&self) -> String {
        format!(
            "{} (migrating from {})",
            self.target.description(),
            self.source.description()
        )
    }

    fn is_secure(&self) -> bool {
        self.target.is_secure() && self.source.is_secure()
    }

    async fn generate_mek(
        &self,
        mek_id: &MekId,
        algorithm: EncryptionAlgorithm,
    ) -> Result<MekVersionInfo> {
        if *mek_id == self.source_mek {
            return Err(TdeError::AlreadyExists {
                key: format!("mek:{mek_id} (the migration source's MEK)"),
            });
        }
        self.target.generate_mek(mek_id, algorithm).await
    }

    async fn wrap_tek(
        &self,
        mek: &MekRef,
        tek: &TableKey,
        ctx: &WrapContext,
    ) -> Result<WrappedTek> {
        self.for_id(&mek.id).wrap_tek(mek, tek, ctx).await
    }

    async fn unwrap_tek(&self, wrapped: &WrappedTek, ctx: &WrapContext) -> Result<TableKey> {
        let member = self.for_envelope(wrapped, ctx)?;
        self.provider(member).unwrap_tek(wrapped, ctx).await
    }

    async fn rewrap_tek(
        &self,
        wrapped: &WrappedTek,
        ctx: &WrapContext,
        new_mek: &MekRef,
    ) -> Result<WrappedTek> {
        let from = self.for_envelope(wrapped, ctx)?;
        let to = self.member_for(&new_mek.id);
        if from == to {
            // One provider: its own re-wrap (server-side where it has one).
            return self.provider(to).rewrap_tek(wrapped, ctx, new_mek).await;
        }
        // Across providers the TEK passes through this process: unwrapped by one, wrapped by
        // the other, and dropped (zeroized) at once.
        let tek = self.provider(from).unwrap_tek(wrapped, ctx).await?;
        self.provider(to).wrap_tek(new_mek, &tek, ctx).await
    }

    async fn mek_info(&self, mek_id: &MekId) -> Result<MekInfo> {
        self.for_id(mek_id).mek_info(mek_id).await
    }

    async fn list_meks(&self) -> Result<Vec<MekId>> {
        let mut ids = self.target.list_meks().await?;
        for id in self.source.list_meks().await? {
            if id == self.source_mek && !ids.contains(&id) {
                ids.push(id);
            }
        }
        // Only the source's MEK is reachable through the set on the source side.
        ids.retain(|id| self.member_for(id) == Member::Target || *id == self.source_mek);
        Ok(ids)
    }

    async fn rotate_mek(&self, mek_id: &MekId) -> Result<MekVersionInfo> {
        self.for_id(mek_id).rotate_mek(mek_id).await
    }

    async fn set_mek_state(&self, mek: &MekRef, state: KeyState) -> Result<()> {
        self.for_id(&mek.id).set_mek_state(mek, state).await
    }

    async fn health(&self) -> Result<ProviderHealth> {
        let start = Instant::now();
        let one = |r: Result<ProviderHealth>| match r {
            Ok(h) => (h.healthy, h.detail),
            Err(e) => (false, e.to_string()),
        };
        let (t_ok, t_detail) = one(self.target.health().await);
        let (s_ok, s_detail) = one(self.source.health().await);
        Ok(ProviderHealth {
            healthy: t_ok && s_ok,
            latency: start.elapsed(),
            detail: format!(
                "target {} ({}): {}; source {} ({}): {}",
                self.target.kind(),
                if t_ok { "healthy" } else { "UNHEALTHY" },
                t_detail,
                self.source.kind(),
                if s_ok { "healthy" } else { "UNHEALTHY" },
                s_detail
            ),
        })
    }

    async fn backup_material(&self, meks: &[MekRef]) -> Result<Vec<MekBackupItem>> {
        let (from_source, from_target): (Vec<MekRef>, Vec<MekRef>) = meks
            .iter()
            .cloned()
            .partition(|m| self.member_for(&m.id) == Member::Source);
        let mut s = if from_source.is_empty() {
            Vec::new()
        } else {
            self.source.backup_material(&from_source).await?
        };
        let mut t = if from_target.is_empty() {
            Vec::new()
        } else {
            self.target.backup_material(&from_target).await?
        };
        // Keep the caller's order.
        let mut out = Vec::with_capacity(meks.len());
        for m in meks {
            let list = if self.member_for(&m.id) == Member::Source {
                &mut s
            } else {
                &mut t
            };
            if let Some(pos) = list.iter().position(|i| i.mek == *m) {
                out.push(list.remove(pos));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::ids::MekVersion;

    /// A provider that only has a kind: every call that would reach it fails, so a test learns
    /// which member a call was routed to from the error.
    #[derive(Debug)]
    struct Named(ProviderKind, &'static str);

    #[async_trait]
    impl MekProvider for Named {
        fn kind(&self) -> ProviderKind {
            self.0
        }
        fn description(&self) -> String {
            self.1.to_string()
        }
        fn is_secure(&self) -> bool {
            self.0 != ProviderKind::InMemory
        }
        async fn generate_mek(&self, id: &MekId, _: EncryptionAlgorithm) -> Result<MekVersionInfo> {
            Err(self.reached(id.as_str()))
        }
        async fn wrap_tek(
            &self,
            mek: &MekRef,
            _: &TableKey,
            _: &WrapContext,
        ) -> Result<WrappedTek> {
            Err(self.reached(&mek.to_string()))
        }
        async fn unwrap_tek(&self, w: &WrappedTek, _: &WrapContext) -> Result<TableKey> {
            Err(self.reached(&w.mek.to_string()))
        }
        async fn mek_info(&self, id: &MekId) -> Result<MekInfo> {
            Err(self.reached(id.as_str()))
        }
        async fn list_meks(&self) -> Result<Vec<MekId>> {
            Ok(vec![
                MekId::new(format!("{}_a", self.1)).unwrap_or_else(|_| unreachable!()),
            ])
        }
        async fn rotate_mek(&self, id: &MekId) -> Result<MekVersionInfo> {
            Err(self.reached(id.as_str()))
        }
        async fn set_mek_state(&self, mek: &MekRef, _: KeyState) -> Result<()> {
            Err(self.reached(&mek.to_string()))
        }
        async fn health(&self) -> Result<ProviderHealth> {
            Err(self.reached("health"))
        }
    }

    impl Named {
        fn reached(&self, what: &str) -> TdeError {
            TdeError::Unsupported {
                what: format!("{} reached with {what}", self.1),
                hint: String::new(),
            }
        }
    }

    fn id(s: &str) -> MekId {
        MekId::new(s).unwrap_or_else(|_| unreachable!())
    }

    fn set(target: ProviderKind, source: ProviderKind) -> ProviderSet {
        ProviderSet::new(
            Arc::new(Named(target, "target")),
            id("dst"),
            Arc::new(Named(source, "source")),
            id("src"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn envelope(kind: ProviderKind, mek: &str) -> WrappedTek {
        WrappedTek {
            format: crate::envelope::FORMAT_VERSION,
            algorithm: EncryptionAlgorithm::Aes256Gcm,
            provider: kind,
            mek: MekRef::new(id(mek), MekVersion::FIRST),
            payload: vec![0; 60],
        }
    }

    fn ctx() -> WrapContext {
        WrapContext::table_key(&"users@v1".parse().unwrap_or_else(|_| unreachable!()))
    }

    #[tokio::test]
    async fn calls_go_to_the_member_that_holds_the_named_mek() {
        let s = set(ProviderKind::Pkcs11, ProviderKind::SecureFile);
        let reached = |r: std::result::Result<(), TdeError>| r.unwrap_err().to_string();
        assert!(reached(s.mek_info(&id("src")).await.map(drop)).contains("source reached"));
        assert!(reached(s.mek_info(&id("dst")).await.map(drop)).contains("target reached"));
        assert!(reached(s.mek_info(&id("other")).await.map(drop)).contains("target reached"));
        let e = s
            .generate_mek(&id("src"), EncryptionAlgorithm::Aes256Gcm)
            .await
            .unwrap_err();
        assert!(matches!(e, TdeError::AlreadyExists { .. }), "{e:?}");
        assert!(
            reached(
                s.generate_mek(&id("dst"), EncryptionAlgorithm::Aes256Gcm)
                    .await
                    .map(drop)
            )
            .contains("target reached")
        );
        let src = envelope(ProviderKind::SecureFile, "src");
        assert!(reached(s.unwrap_tek(&src, &ctx()).await.map(drop)).contains("source reached"));
        let dst = envelope(ProviderKind::Pkcs11, "dst");
        assert!(reached(s.unwrap_tek(&dst, &ctx()).await.map(drop)).contains("target reached"));
        assert_eq!(s.kind(), ProviderKind::Pkcs11);
        assert!(s.description().contains("target (migrating from source)"));
        let mut ids = s.list_meks().await.unwrap_or_default();
        ids.sort();
        assert_eq!(
            ids,
            vec![id("target_a")],
            "only the source's own MEK is listed from it"
        );
    }

    #[tokio::test]
    async fn an_envelope_under_the_other_members_identity_is_refused_before_any_call() {
        let s = set(ProviderKind::Pkcs11, ProviderKind::SecureFile);
        // A source wrap relabelled with the target's MEK, and the reverse.
        for (kind, mek) in [
            (ProviderKind::SecureFile, "dst"),
            (ProviderKind::Pkcs11, "src"),
        ] {
            let e = s
                .unwrap_tek(&envelope(kind, mek), &ctx())
                .await
                .unwrap_err();
            assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e:?}");
            assert!(!e.to_string().contains("reached"), "{e}");
            let e = s
                .rewrap_tek(
                    &envelope(kind, mek),
                    &ctx(),
                    &MekRef::new(id("dst"), MekVersion::FIRST),
                )
                .await
                .unwrap_err();
            assert!(matches!(e, TdeError::AuthenticationFailed { .. }), "{e:?}");
        }
    }

    #[test]
    fn the_two_mek_ids_must_differ() {
        let same = ProviderSet::new(
            Arc::new(Named(ProviderKind::SecureFile, "a")),
            id("k"),
            Arc::new(Named(ProviderKind::SecureFile, "b")),
            id("k"),
        )
        .unwrap_err()
        .to_string();
        assert!(same.contains("migration_source"), "{same}");
        assert!(same.contains("same provider"), "{same}");
        let shared = ProviderSet::new(
            Arc::new(Named(ProviderKind::Pkcs11, "a")),
            id("k"),
            Arc::new(Named(ProviderKind::SecureFile, "b")),
            id("k"),
        )
        .unwrap_err()
        .to_string();
        assert!(shared.contains("both use the MEK id k"), "{shared}");
        assert!(shared.contains("k_pkcs11_hsm"), "{shared}");
    }

    #[tokio::test]
    async fn health_is_healthy_only_when_both_members_are() {
        let s = set(ProviderKind::Pkcs11, ProviderKind::SecureFile);
        let h = s.health().await.unwrap_or_else(|e| panic!("{e}"));
        assert!(!h.healthy);
        assert!(
            h.detail.contains("target pkcs11-hsm (UNHEALTHY)"),
            "{}",
            h.detail
        );
        assert!(
            h.detail.contains("source secure-file (UNHEALTHY)"),
            "{}",
            h.detail
        );
        assert!(s.is_secure(), "two secure members make a secure set");
        let insecure = set(ProviderKind::Pkcs11, ProviderKind::InMemory);
        assert!(
            !insecure.is_secure(),
            "an in-memory source makes the set insecure"
        );
    }
}
