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
//!
//! Third-party platforms (`[[component]]`) are held the same way, as the
//! subject `component/<appid>` (component token and reconciliation). Their
//! authorizers are not in the config: they are registered at run time
//! (`authorizer` module) and held by every replica that holds their
//! platform; nothing about them is kept in this process.
//!
//! WeCom third-party suites (`[[wecom_suite]]`) are held likewise, as the
//! subject `suite/<suite id>` (the suite token); the corps that authorized
//! a suite (`corp/<suite id>/<corpid>`) are registered at run time
//! (`suite` module) and held by every replica that holds the suite.

use crate::config::{Component, Credential, WecomSuite};
use crate::conn::RedisError;
use crate::Shared;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use wxtoken_schema::registry::{self, Registration};
use wxtoken_schema::{component_id, suite_id, CredentialKeys, Kind, Subject};

/// How often a replica marks itself alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A replica not seen for this long is taken for dead (its holds on
/// credentials no longer keep them registered).
pub const LIVENESS: Duration = Duration::from_secs(15);

/// Credentials registered per round trip.
const CHUNK: usize = 500;

/// What a held subject is.
#[derive(Debug)]
pub enum Target {
    /// A credential of the config (with its secret).
    App(Credential),
    /// A third-party platform of the config (with its secrets).
    Component(Arc<Component>),
    /// An authorizer of a held platform.
    Authorizer {
        /// The platform.
        component: Arc<Component>,
        /// The authorizer's appid.
        appid: String,
    },
    /// A WeCom third-party suite of the config (with its secrets).
    Suite(Arc<WecomSuite>),
    /// A corp that authorized a held suite.
    Corp {
        /// The suite.
        suite: Arc<WecomSuite>,
        /// The corp's corpid.
        corpid: String,
    },
}

/// One held subject: what it is and its key names.
#[derive(Debug)]
pub struct Held {
    /// What it is.
    pub target: Target,
    /// Its key names.
    pub keys: CredentialKeys,
}

impl Held {
    /// The values kept for it, the primary one first: a credential's access
    /// token and tickets; a platform's component token and reconciliation;
    /// an authorizer's access token and the platform's authorizer tickets.
    pub fn kinds(&self) -> Vec<Kind> {
        match &self.target {
            Target::App(cred) => std::iter::once(Kind::AccessToken)
                .chain(cred.tickets.iter().map(|t| t.kind()))
                .collect(),
            Target::Component(_) => vec![Kind::ComponentAccessToken, Kind::AuthorizerList],
            Target::Authorizer { component, .. } => component.authorizer_kinds(),
            Target::Suite(_) => vec![Kind::SuiteAccessToken],
            Target::Corp { suite, .. } => suite.corp_kinds(),
        }
    }

    /// Whether its values come from WeCom (`gettoken`, `get_suite_token`,
    /// `get_corp_token` and the tickets hand back the same value until it
    /// expires).
    pub fn is_wecom(&self) -> bool {
        match &self.target {
            Target::App(cred) => cred.is_wecom(),
            Target::Suite(_) | Target::Corp { .. } => true,
            _ => false,
        }
    }

    /// The WeChat appid (public; a WeCom app's corpid).
    pub fn appid(&self) -> &str {
        match &self.target {
            Target::App(cred) => &cred.appid,
            Target::Component(c) => &c.appid,
            Target::Authorizer { appid, .. } => appid,
            Target::Suite(suite) => &suite.suite_id,
            Target::Corp { corpid, .. } => corpid,
        }
    }

    /// The mode shown in status: `classic`/`stable`, `wecom`, `component`,
    /// `authorizer`.
    pub fn mode(&self) -> &'static str {
        match &self.target {
            Target::App(cred) => cred.mode_name(),
            Target::Component(_) => "component",
            Target::Authorizer { .. } => "authorizer",
            Target::Suite(_) => "suite",
            Target::Corp { .. } => "suite_corp",
        }
    }
}

/// The held credentials and platforms by id, swapped whole on reload.
pub struct Registry {
    held: ArcSwap<HashMap<String, Arc<Held>>>,
    /// The held platforms by component appid.
    components: ArcSwap<HashMap<String, Arc<Component>>>,
    /// The held WeCom suites by suite id.
    suites: ArcSwap<HashMap<String, Arc<WecomSuite>>>,
    namespace: String,
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Changes {
    /// Newly held (or changed: appid, mode, platform, agentid or tickets)
    /// credentials.
    pub added: Vec<Arc<Held>>,
    /// Ids no longer held.
    pub removed: Vec<CredentialKeys>,
}

impl Registry {
    /// An empty registry for `namespace`.
    pub fn new(namespace: &str) -> Registry {
        Registry {
            held: ArcSwap::from_pointee(HashMap::new()),
            components: ArcSwap::from_pointee(HashMap::new()),
            suites: ArcSwap::from_pointee(HashMap::new()),
            namespace: namespace.to_owned(),
        }
    }

    /// The subject `id`, if this replica holds it (an authorizer: if it
    /// holds the authorizer's platform).
    pub fn get(&self, id: &str) -> Option<Arc<Held>> {
        if let Some(Subject::Authorizer { component, appid }) = Subject::parse(id) {
            let component = self.component(component)?;
            let keys = CredentialKeys::for_id(&self.namespace, id).ok()?;
            return Some(Arc::new(Held {
                target: Target::Authorizer {
                    component,
                    appid: appid.to_owned(),
                },
                keys,
            }));
        }
        if let Some(Subject::Corp { suite, corpid }) = Subject::parse(id) {
            let suite = self.suite(suite)?;
            let keys = CredentialKeys::for_id(&self.namespace, id).ok()?;
            return Some(Arc::new(Held {
                target: Target::Corp {
                    suite,
                    corpid: corpid.to_owned(),
                },
                keys,
            }));
        }
        self.held.load().get(id).cloned()
    }

    /// The held suite with this suite id.
    pub fn suite(&self, suite_id: &str) -> Option<Arc<WecomSuite>> {
        self.suites.load().get(suite_id).cloned()
    }

    /// The held suite whose config id is `id`.
    pub fn suite_by_id(&self, id: &str) -> Option<Arc<WecomSuite>> {
        self.suites.load().values().find(|s| s.id == id).cloned()
    }

    /// Every held suite.
    pub fn suites(&self) -> Vec<Arc<WecomSuite>> {
        self.suites.load().values().cloned().collect()
    }

    /// Whether this replica holds the subject `id` (cheaper than [`get`](Registry::get)).
    pub fn holds(&self, id: &str) -> bool {
        match Subject::parse(id) {
            Some(Subject::Authorizer { component, .. }) => {
                self.components.load().contains_key(component)
            }
            Some(Subject::Corp { suite, .. }) => self.suites.load().contains_key(suite),
            _ => self.held.load().contains_key(id),
        }
    }

    /// The held platform with this component appid.
    pub fn component(&self, appid: &str) -> Option<Arc<Component>> {
        self.components.load().get(appid).cloned()
    }

    /// The held platform whose config id is `id`.
    pub fn component_by_id(&self, id: &str) -> Option<Arc<Component>> {
        self.components
            .load()
            .values()
            .find(|c| c.id == id)
            .cloned()
    }

    /// Every held platform.
    pub fn components(&self) -> Vec<Arc<Component>> {
        self.components.load().values().cloned().collect()
    }

    /// Every held credential and platform (not the authorizers).
    pub fn all(&self) -> Arc<HashMap<String, Arc<Held>>> {
        self.held.load_full()
    }

    /// Replaces the held set with `creds`, `components` and `suites` (ids
    /// were validated with the config) and says what changed.
    pub fn replace(
        &self,
        creds: Vec<Credential>,
        components: Vec<Component>,
        suites: Vec<WecomSuite>,
    ) -> Changes {
        let old = self.held.load_full();
        let mut new = HashMap::with_capacity(creds.len() + components.len());
        let mut changes = Changes::default();
        for cred in creds {
            let Ok(keys) = CredentialKeys::new(&self.namespace, &cred.id) else {
                tracing::error!(id = %cred.id, "invalid key names; credential skipped");
                continue;
            };
            let same = old.get(&cred.id).filter(|h| match &h.target {
                Target::App(c) => {
                    c.appid == cred.appid
                        && c.mode == cred.mode
                        && c.platform == cred.platform
                        && c.agentid == cred.agentid
                        && c.tickets == cred.tickets
                }
                _ => false,
            });
            let id = cred.id.clone();
            let held = Arc::new(Held {
                target: Target::App(cred),
                keys,
            });
            if same.is_none() {
                changes.added.push(held.clone());
            }
            new.insert(id, held);
        }
        let mut by_appid = HashMap::with_capacity(components.len());
        for c in components {
            let Ok(keys) = CredentialKeys::component(&self.namespace, &c.appid) else {
                tracing::error!(id = %c.id, "invalid key names; component skipped");
                continue;
            };
            let id = component_id(&c.appid);
            let c = Arc::new(c);
            let same = old.get(&id).filter(|h| match &h.target {
                Target::Component(o) => o.authorizer_tickets == c.authorizer_tickets,
                _ => false,
            });
            let held = Arc::new(Held {
                target: Target::Component(c.clone()),
                keys,
            });
            if same.is_none() {
                changes.added.push(held.clone());
            }
            by_appid.insert(c.appid.clone(), c);
            new.insert(id, held);
        }
        self.components.store(Arc::new(by_appid));
        let mut by_suite_id = HashMap::with_capacity(suites.len());
        for s in suites {
            let Ok(keys) = CredentialKeys::suite(&self.namespace, &s.suite_id) else {
                tracing::error!(id = %s.id, "invalid key names; suite skipped");
                continue;
            };
            let id = suite_id(&s.suite_id);
            let s = Arc::new(s);
            if !old.contains_key(&id) {
                changes.added.push(Arc::new(Held {
                    target: Target::Suite(s.clone()),
                    keys: keys.clone(),
                }));
            }
            new.insert(
                id,
                Arc::new(Held {
                    target: Target::Suite(s.clone()),
                    keys,
                }),
            );
            by_suite_id.insert(s.suite_id.clone(), s);
        }
        self.suites.store(Arc::new(by_suite_id));
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
                        appid: h.appid(),
                        mode: h.mode(),
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

/// Upgrades data written with key schema 1, if any, before the first
/// registration (`wxtoken_schema::index::migrate_v1`; a no-op afterwards).
/// Bounded by ten minutes rather than the step timeout: with 100,000
/// authorizers it reads a few hundred pages.
pub async fn migrate(sh: &Shared) -> Result<(), RedisError> {
    let mut con = sh.redis.con();
    let set = tokio::time::timeout(
        Duration::from_secs(600),
        wxtoken_schema::index::migrate_v1(&mut con, &sh.namespace),
    )
    .await
    .map_err(|_| RedisError("migrating key schema 1 took over ten minutes".into()))??;
    if set > 0 {
        tracing::warn!(
            values = set,
            "upgraded data written with key schema 1: schedules set from the due-queue"
        );
    }
    Ok(())
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
