//! The credentials this replica holds the secrets of, and their place in
//! the namespace's registry.
//!
//! The set is read from the config file at start and replaced on reload
//! (SIGHUP): new credentials are registered (queued, due at once), dropped
//! ones are no longer refreshed here and are unregistered — their keys are
//! deleted when no live replica holds them any more. Secrets stay in this
//! process; Redis learns ids, appids and modes only.
//!
//! The heartbeat (every [`HEARTBEAT`]) marks the replica alive and is how a
//! replica notices that Redis lost its data (or that it was taken for dead):
//! Redis then no longer knows when it was last seen, and the replica
//! registers all its credentials again at once.

use crate::config::Credential;
use crate::conn::RedisError;
use crate::Shared;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use wxtoken_schema::registry::{self, Registration};
use wxtoken_schema::{CredentialKeys, Kind};

/// How often a replica marks itself alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A replica not seen for this long is taken for dead (its holds on
/// credentials no longer keep them registered).
pub const LIVENESS: Duration = Duration::from_secs(15);

/// Credentials registered per round trip.
const CHUNK: usize = 500;

/// One held credential: its config entry and key names.
#[derive(Debug)]
pub struct Held {
    /// The config entry (with the secret).
    pub cred: Credential,
    /// Its key names.
    pub keys: CredentialKeys,
}

impl Held {
    /// The values kept for it: the access token, then its tickets.
    pub fn kinds(&self) -> Vec<Kind> {
        std::iter::once(Kind::AccessToken)
            .chain(self.cred.tickets.iter().map(|t| t.kind()))
            .collect()
    }
}

/// The held credentials by id, swapped whole on reload.
pub struct Registry {
    held: ArcSwap<HashMap<String, Arc<Held>>>,
    namespace: String,
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Newly held (or changed: appid, mode or tickets) credentials.
    pub added: Vec<Arc<Held>>,
    /// Ids no longer held.
    pub removed: Vec<CredentialKeys>,
}

impl Registry {
    /// An empty registry for `namespace`.
    pub fn new(namespace: &str) -> Registry {
        Registry {
            held: ArcSwap::from_pointee(HashMap::new()),
            namespace: namespace.to_owned(),
        }
    }

    /// The credential `id`, if this replica holds it.
    pub fn get(&self, id: &str) -> Option<Arc<Held>> {
        self.held.load().get(id).cloned()
    }

    /// Every held credential.
    pub fn all(&self) -> Arc<HashMap<String, Arc<Held>>> {
        self.held.load_full()
    }

    /// Replaces the held set with `creds` (ids were validated with the
    /// config) and says what changed.
    pub fn replace(&self, creds: Vec<Credential>) -> Changes {
        let old = self.held.load_full();
        let mut new = HashMap::with_capacity(creds.len());
        let mut changes = Changes::default();
        for cred in creds {
            let Ok(keys) = CredentialKeys::new(&self.namespace, &cred.id) else {
                tracing::error!(id = %cred.id, "invalid key names; credential skipped");
                continue;
            };
            let same = old.get(&cred.id).filter(|h| {
                h.cred.appid == cred.appid
                    && h.cred.mode == cred.mode
                    && h.cred.tickets == cred.tickets
            });
            let held = Arc::new(Held { cred, keys });
            if same.is_none() {
                changes.added.push(held.clone());
            }
            new.insert(held.cred.id.clone(), held);
        }
        changes.removed = old
            .iter()
            .filter(|(id, _)| !new.contains_key(*id))
            .map(|(_, h)| h.keys.clone())
            .collect();
        self.held.store(Arc::new(new));
        changes
    }
}

/// Registers `creds` as held by this replica, in chunks. Returns how many
/// values were newly queued.
pub async fn register(sh: &Shared, creds: &[Arc<Held>]) -> Result<u32, RedisError> {
    let mut added = 0;
    for chunk in creds.chunks(CHUNK) {
        let kinds: Vec<Vec<Kind>> = chunk.iter().map(|h| h.kinds()).collect();
        let items: Vec<_> = chunk
            .iter()
            .zip(&kinds)
            .map(|(h, kinds)| {
                (
                    h.keys.clone(),
                    Registration {
                        appid: &h.cred.appid,
                        mode: h.cred.mode.as_str(),
                        kinds,
                        ticket_delay: sh.refresh.lock_ttl,
                    },
                )
            })
            .collect();
        let mut con = sh.redis.con();
        added += sh
            .redis
            .step(registry::register(&mut con, &items, &sh.replica, LIVENESS))
            .await?;
    }
    Ok(added)
}

/// Drops this replica's hold on `keys`' credential (deleting it when no
/// live replica holds it). Returns whether it was deleted.
pub async fn unregister(sh: &Shared, keys: &CredentialKeys) -> Result<bool, RedisError> {
    let mut con = sh.redis.con();
    sh.redis
        .step(registry::unregister(&mut con, keys, &sh.replica, LIVENESS))
        .await
}

/// Marks this replica alive. `true` when it must register everything
/// again: Redis did not know it (first start, Redis lost its data) or took
/// it for dead.
pub async fn heartbeat(sh: &Shared) -> Result<bool, RedisError> {
    let mut con = sh.redis.con();
    let (now, prev) = sh
        .redis
        .step(registry::heartbeat(&mut con, &sh.namespace, &sh.replica))
        .await?;
    let window = u64::try_from(LIVENESS.as_millis()).unwrap_or(u64::MAX);
    Ok(prev.is_none_or(|seen| now.saturating_sub(seen) > window))
}

/// Takes this replica off the live set (clean shutdown; best effort).
pub async fn retire(sh: &Shared) {
    let mut con = sh.redis.con();
    if let Err(e) = sh
        .redis
        .step(registry::retire(&mut con, &sh.namespace, &sh.replica))
        .await
    {
        tracing::debug!(error = %e, "could not retire from the live set");
    }
}
