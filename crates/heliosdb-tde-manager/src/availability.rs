//! Which MEK versions are present and which tables they leave readable
//! ([`KeyManager::key_availability`]).

use crate::KeyManager;
use heliosdb_tde_core::store::KeyStoreExt;
use heliosdb_tde_core::{MekId, MekInfo, MekRef, Result, TableId, TekRecord, WrapContext};
use std::collections::BTreeMap;

/// Whether one MEK version that stored TEKs depend on is usable.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MekAvailability {
    /// The MEK version.
    pub mek: MekRef,
    /// How many stored TEK wraps (current or kept previous) are under it.
    pub teks: u64,
    /// Whether the provider has this version.
    pub present: bool,
    /// Whether one of its TEKs unwrapped through the provider.
    pub unwraps: bool,
    /// Why it is not usable, if it is not.
    pub error: Option<String>,
}

/// What [`KeyManager::key_availability`] found.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct KeyAvailability {
    /// The key store's location and identity (see [`KeyManager::store_id`]).
    pub store: String,
    /// Every MEK version some stored TEK depends on.
    pub meks: Vec<MekAvailability>,
    /// Tables with at least one TEK version that no available MEK version can unwrap.
    pub unreadable_tables: Vec<TableId>,
}

impl KeyAvailability {
    /// Whether every stored TEK can be unwrapped.
    pub fn all_readable(&self) -> bool {
        self.unreadable_tables.is_empty()
    }
}

impl KeyManager {
    /// Checks that every MEK version some stored TEK depends on is in the provider and unwraps
    /// one of its TEKs, and lists the tables that cannot be read. Read-only.
    pub async fn key_availability(&self) -> Result<KeyAvailability> {
        // For each MEK version: how many TEKs it wraps and one of them to try.
        let mut by_mek: BTreeMap<MekRef, (u64, Option<TekRecord>)> = BTreeMap::new();
        let mut teks: Vec<(TableId, MekRef, Option<MekRef>)> = Vec::new();
        self.store
            .tek_pages(None, 4096)
            .for_each(|page| {
                for r in page {
                    for (i, w) in std::iter::once(&r.wrapped)
                        .chain(r.previous_wrap.as_ref())
                        .enumerate()
                    {
                        let e = by_mek.entry(w.mek.clone()).or_insert((0, None));
                        e.0 += 1;
                        if i == 0 && e.1.is_none() {
                            e.1 = Some(r.clone());
                        }
                    }
                    teks.push((
                        r.id.table.clone(),
                        r.wrapped.mek.clone(),
                        r.previous_wrap.as_ref().map(|p| p.mek.clone()),
                    ));
                }
                Ok(())
            })
            .await?;
        let mut infos: BTreeMap<MekId, Result<MekInfo>> = BTreeMap::new();
        let mut meks = Vec::with_capacity(by_mek.len());
        for (mek, (count, sample)) in by_mek {
            if !infos.contains_key(&mek.id) {
                let info = self.call(self.mek_provider.mek_info(&mek.id)).await;
                infos.insert(mek.id.clone(), info);
            }
            let present = match infos.get(&mek.id) {
                Some(Ok(info)) => info.versions.iter().any(|v| v.mek == mek),
                _ => false,
            };
            let mut error = match infos.get(&mek.id) {
                Some(Err(e)) => Some(e.to_string()),
                _ if !present => Some("the provider does not have this MEK version".into()),
                _ => None,
            };
            let mut unwraps = false;
            if present {
                let tried = match &sample {
                    Some(r) => self
                        .call(
                            self.mek_provider
                                .unwrap_tek(&r.wrapped, &WrapContext::table_key(&r.id)),
                        )
                        .await
                        .map(|_| ()),
                    // Only kept as a previous wrap: its presence is what can be checked.
                    None => Ok(()),
                };
                match tried {
                    Ok(()) => unwraps = true,
                    Err(e) => error = Some(e.to_string()),
                }
            }
            meks.push(MekAvailability {
                mek,
                teks: count,
                present,
                unwraps,
                error,
            });
        }
        let ok = |m: &MekRef| meks.iter().any(|a| a.mek == *m && a.unwraps);
        let mut unreadable_tables: Vec<TableId> = Vec::new();
        for (table, cur, prev) in &teks {
            let readable = ok(cur) || prev.as_ref().is_some_and(ok);
            // The audit key is no user's table; it shares the default MEK with them, so a lost
            // MEK shows in the user tables it leaves unreadable.
            if !readable && !table.is_reserved() && unreadable_tables.last() != Some(table) {
                unreadable_tables.push(table.clone());
            }
        }
        let store = match self.store_id().await? {
            Some(id) => format!("{} (id {id})", self.store.location()),
            None => self.store.location(),
        };
        Ok(KeyAvailability {
            store,
            meks,
            unreadable_tables,
        })
    }
}
