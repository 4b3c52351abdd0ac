//! [`Con`]: the connection every Redis step of wxtoken runs on — a single
//! server's (or the Sentinel-named primary's) `ConnectionManager`, a Redis
//! Cluster connection, or one cluster primary by address. It implements
//! `redis::aio::ConnectionLike`, so commands, scripts
//! (`Script::invoke_async`) and pipelines run on it unchanged.
//!
//! See [`Con`] for what pipelines become on a cluster.

use futures_util::future::join_all;
use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, ServerError, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A connection for one step (cheap to clone; clones share the
/// connection).
///
/// # Pipelines on a cluster
///
/// redis-rs's cluster connection refuses a pipeline whose keys are in
/// several hash slots. [`Con::Cluster`] splits such a pipeline instead:
///
/// - Commands are grouped by the slot of their key (a script by its first
///   key, like redis-rs routes it); each group is one sub-pipeline to the
///   slot's primary, and the groups are sent concurrently. A pipeline whose
///   keys are all in one slot is sent as it is: one round trip.
/// - Keyless commands that run on any node (`TIME`, `ECHO`, `CONFIG GET`,
///   a script without keys…) go with the group of the first keyed command.
///   `SCRIPT LOAD` goes with every group, so every node that runs the
///   script's `EVALSHA` has loaded it just before, in the same round trip.
/// - Commands redis-rs sends to several nodes (`PING`, `FLUSHALL`, `INFO`,
///   `KEYS`, a `DEL`/`MGET`/`EXISTS` whose keys are in several slots…) are
///   sent on their own through the cluster connection, which fans them out
///   and merges the answers; they split the pipeline into steps run one
///   after another, so commands before them run before and commands after
///   them after (and `SCRIPT LOAD` is then sent to every node on its own).
/// - The raw replies are put back in the pipeline's order, so the
///   pipeline's own handling (ignored commands, `ignore_errors`, a failed
///   command's `Value::ServerError`) works as on a single server.
/// - An atomic pipeline (`.atomic()`) becomes one `MULTI`/`EXEC` per slot:
///   **atomic per slot**, not across slots (Redis Cluster has no
///   cross-slot transactions). Every key of one credential shares one hash
///   tag, so the reads and writes of one credential stay consistent; reads
///   of several credentials in one atomic pipeline are each consistent but
///   may be from slightly different moments. The answer has the single
///   server's shape (the `EXEC` array last).
/// - A connection error in any group fails the whole pipeline (as on a
///   single server); groups already sent may have run. Callers retry steps
///   anyway.
/// - redis-rs follows `MOVED` (a failover, a moved slot) for commands and
///   plain pipelines, but not inside a transaction: a transaction aborted
///   by `MOVED` or `READONLY` makes this connection send an `EXISTS` of the
///   group's first key to the slot (so redis-rs follows the redirection
///   and refreshes its slot map) and the transaction once more. `ASK` (a
///   slot being migrated) is not followed inside a transaction: such a
///   step fails until the migration of that slot ends.
#[derive(Clone)]
pub enum Con {
    /// One server, or the primary Sentinel names.
    Server(ConnectionManager),
    /// A Redis Cluster: each command goes to the primary of its key's slot;
    /// pipelines are split by slot.
    Cluster(ClusterCon),
    /// One primary of a Redis Cluster: every command goes to it, whatever
    /// its keys ([`crate::Managed::nodes`], for `SCAN` sweeps).
    Node {
        /// The cluster connection.
        con: ClusterCon,
        /// The node's host as the cluster announces it.
        host: String,
        /// The node's port.
        port: u16,
    },
}

/// Shortest time between two probes of the seeds ([`ClusterCon`]).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Seeds probed to explain a cluster connection that reached no node.
const PROBED_SEEDS: usize = 3;

/// A Redis Cluster connection (cheap to clone; clones share it).
///
/// When the cluster connection reaches no node at all, redis-rs says only
/// "No connections found", which hides why (an untrusted certificate, a
/// refused client certificate, a wrong port…). Such an error is then
/// completed with what connecting to the first seeds directly says (at most
/// one probe a second, each bounded by the connection timeout),
/// so [`crate::describe`] and [`crate::explain`] can name the TLS file to
/// look at. The seeds' answers hold addresses, never the password.
#[derive(Clone)]
pub struct ClusterCon {
    con: ClusterConnection,
    probe: Arc<Probe>,
}

struct Probe {
    seeds: Vec<(String, redis::Client)>,
    timeout: Duration,
    /// When the seeds were last probed and what they said.
    last: Mutex<Option<(Instant, Option<String>)>>,
}

impl ClusterCon {
    /// `con`, whose failures to reach any node are explained by probing
    /// `seeds` (`(host:port, client)`) with `timeout`.
    pub fn new(
        con: ClusterConnection,
        seeds: Vec<(String, redis::Client)>,
        timeout: Duration,
    ) -> ClusterCon {
        ClusterCon {
            con,
            probe: Arc::new(Probe {
                seeds,
                timeout,
                last: Mutex::new(None),
            }),
        }
    }

    /// The redis-rs cluster connection.
    pub fn connection(&self) -> &ClusterConnection {
        &self.con
    }

    /// `e`, completed with the seeds' answers when it says no node could be
    /// reached.
    async fn diagnose(&self, e: RedisError) -> RedisError {
        if e.kind() != redis::ErrorKind::ClusterConnectionNotFound {
            return e;
        }
        let cached = {
            let last = self.probe.last.lock().unwrap_or_else(|p| p.into_inner());
            last.as_ref()
                .filter(|(at, _)| at.elapsed() < PROBE_EVERY)
                .map(|(_, why)| why.clone())
        };
        let why = match cached {
            Some(why) => why,
            None => {
                let why = self.probe.run().await;
                *self.probe.last.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), why.clone()));
                why
            }
        };
        match why {
            Some(why) => {
                RedisError::from((e.kind(), "Redis Cluster: no node could be reached", why))
            }
            None => e,
        }
    }
}

impl Probe {
    /// What the first seeds say when connected to directly, or `None` if
    /// one of them answers.
    async fn run(&self) -> Option<String> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut said = Vec::new();
        for (addr, client) in self.seeds.iter().take(PROBED_SEEDS) {
            let attempt = client.get_multiplexed_async_connection_with_config(&config);
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => said.push(format!("seed {addr}: {e}")),
                Err(_) => said.push(format!("seed {addr}: no answer within {:?}", self.timeout)),
            }
        }
        (!said.is_empty()).then(|| said.join("; "))
    }
}

impl std::fmt::Debug for Con {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Con::Server(_) => f.write_str("Con::Server"),
            Con::Cluster(_) => f.write_str("Con::Cluster"),
            Con::Node { host, port, .. } => {
                write!(f, "Con::Node({})", crate::cluster::addr_text(host, *port))
            }
        }
    }
}

impl Con {
    /// The node's `host:port` for [`Con::Node`], else `None`.
    pub fn node(&self) -> Option<String> {
        match self {
            Con::Node { host, port, .. } => Some(crate::cluster::addr_text(host, *port)),
            _ => None,
        }
    }

    fn by_address(host: &str, port: u16) -> SingleNodeRoutingInfo {
        SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        }
    }
}

impl ConnectionLike for Con {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Con::Server(c) => c.req_packed_command(cmd),
            Con::Cluster(c) => async move {
                match c.con.req_packed_command(cmd).await {
                    Err(e) => Err(c.diagnose(e).await),
                    ok => ok,
                }
            }
            .boxed(),
            Con::Node { con, host, port } => async move {
                let routing = RoutingInfo::SingleNode(Con::by_address(host, *port));
                match con.con.route_command(cmd.clone(), routing).await {
                    Err(e) => Err(con.diagnose(e).await),
                    ok => ok,
                }
            }
            .boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Con::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Con::Cluster(c) => async move {
                match split_pipeline(c.con.clone(), pipeline, offset, count).await {
                    Err(e) => Err(c.diagnose(e).await),
                    ok => ok,
                }
            }
            .boxed(),
            Con::Node { con, host, port } => async move {
                let route = Con::by_address(host, *port);
                let answer = con
                    .con
                    .route_pipeline(pipeline.clone(), offset, count, route)
                    .await;
                match answer {
                    Err(e) => Err(con.diagnose(e).await),
                    ok => ok,
                }
            }
            .boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Con::Server(c) => c.get_db(),
            Con::Cluster(_) | Con::Node { .. } => 0,
        }
    }
}

/// Where one command of a pipeline goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// To the primary of this slot.
    Slot(Route),
    /// To any node: with the first keyed group.
    AnyNode,
    /// `SCRIPT LOAD`: with every group.
    EveryGroup,
    /// On its own through the cluster connection (it fans out).
    Alone,
}

/// One sub-pipeline: the original indices of its commands, in order, and
/// whether its reply is the one kept for that index.
#[derive(Debug, PartialEq, Eq)]
struct Group {
    route: Option<Route>,
    cmds: Vec<(usize, bool)>,
    /// The original index of the group's first command placed by key.
    keyed: Option<usize>,
}

/// What a pipeline becomes: steps run one after another.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Sub-pipelines sent concurrently.
    Groups(Vec<Group>),
    /// One command sent on its own.
    Alone(usize),
}

/// The uppercased command name, with the subcommand for container
/// commands (`SCRIPT LOAD`, `CONFIG GET`…), as redis-rs routes them.
fn command_name(args: &[&[u8]]) -> Vec<u8> {
    let Some(first) = args.first() else {
        return Vec::new();
    };
    let mut name = first.to_ascii_uppercase();
    if matches!(
        name.as_slice(),
        b"XGROUP"
            | b"OBJECT"
            | b"SLOWLOG"
            | b"FUNCTION"
            | b"MODULE"
            | b"COMMAND"
            | b"PUBSUB"
            | b"CONFIG"
            | b"MEMORY"
            | b"XINFO"
            | b"CLIENT"
            | b"ACL"
            | b"SCRIPT"
            | b"CLUSTER"
            | b"LATENCY"
    ) {
        if let Some(sub) = args.get(1) {
            name.push(b' ');
            name.extend(sub.to_ascii_uppercase());
        }
    }
    name
}

fn route_of(key: &[u8]) -> Route {
    Route::with_key(key, SlotAddr::Master)
}

fn number(arg: Option<&&[u8]>) -> Option<usize> {
    std::str::from_utf8(arg?).ok()?.parse().ok()
}

/// The place of `cmd`, following redis-rs's routing of single commands
/// (`cluster_routing`): the same commands fan out, the same argument is
/// the key.
fn place(cmd: &Cmd) -> Place {
    locate(cmd).0
}

/// [`place`], and for a command placed by key, the key.
fn locate(cmd: &Cmd) -> (Place, Option<&[u8]>) {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .map(|a| match a {
            redis::Arg::Simple(d) => d,
            // A SCAN cursor: keeps the positions of the other arguments.
            _ => &b"0"[..],
        })
        .collect();
    let name = command_name(&args);
    let key_at = |i: usize| match args.get(i) {
        Some(k) => (Place::Slot(route_of(k)), Some(*k)),
        None => (Place::AnyNode, None),
    };
    // The keys at `indices`: one slot, or several (fans out).
    let keys = |indices: &mut dyn Iterator<Item = usize>| {
        let mut first: Option<(Route, &[u8])> = None;
        for i in indices {
            let Some(k) = args.get(i) else { break };
            let r = route_of(k);
            match first {
                None => first = Some((r, *k)),
                Some((s, _)) if s == r => {}
                Some(_) => return (Place::Alone, None),
            }
        }
        match first {
            Some((r, k)) => (Place::Slot(r), Some(k)),
            None => (Place::AnyNode, None),
        }
    };
    let place = match name.as_slice() {
        b"SCRIPT LOAD" => Place::EveryGroup,
        // All nodes or all primaries.
        b"ACL SETUSER"
        | b"ACL DELUSER"
        | b"ACL SAVE"
        | b"CLIENT SETNAME"
        | b"CLIENT SETINFO"
        | b"SLOWLOG GET"
        | b"SLOWLOG LEN"
        | b"SLOWLOG RESET"
        | b"CONFIG SET"
        | b"CONFIG RESETSTAT"
        | b"CONFIG REWRITE"
        | b"SCRIPT FLUSH"
        | b"LATENCY RESET"
        | b"LATENCY GRAPH"
        | b"LATENCY HISTOGRAM"
        | b"LATENCY HISTORY"
        | b"LATENCY DOCTOR"
        | b"LATENCY LATEST"
        | b"PUBSUB NUMPAT"
        | b"PUBSUB CHANNELS"
        | b"PUBSUB NUMSUB"
        | b"PUBSUB SHARDCHANNELS"
        | b"PUBSUB SHARDNUMSUB"
        | b"SCRIPT KILL"
        | b"FUNCTION KILL"
        | b"FUNCTION STATS"
        | b"DBSIZE"
        | b"DEBUG"
        | b"FLUSHALL"
        | b"FLUSHDB"
        | b"FT._ALIASLIST"
        | b"FT._LIST"
        | b"FUNCTION DELETE"
        | b"FUNCTION FLUSH"
        | b"FUNCTION LOAD"
        | b"FUNCTION RESTORE"
        | b"INFO"
        | b"KEYS"
        | b"MEMORY DOCTOR"
        | b"MEMORY MALLOC-STATS"
        | b"MEMORY PURGE"
        | b"MEMORY STATS"
        | b"PING"
        | b"SCRIPT EXISTS"
        | b"UNWATCH"
        | b"WAIT"
        | b"RANDOMKEY"
        | b"WAITAOF" => Place::Alone,
        // Several keys, split by redis-rs when in several slots.
        b"MGET" | b"DEL" | b"EXISTS" | b"UNLINK" | b"TOUCH" | b"WATCH" => {
            return keys(&mut (1..args.len()))
        }
        b"MSET" => return keys(&mut (1..args.len()).step_by(2)),
        b"JSON.MGET" => return keys(&mut (1..args.len().saturating_sub(1))),
        b"JSON.MSET" => return keys(&mut (1..args.len()).step_by(3)),
        // Keyless, or not routable by key.
        b"SCAN" | b"SHUTDOWN" | b"SLAVEOF" | b"REPLICAOF" | b"TIME" | b"ECHO" | b"AUTH"
        | b"LASTSAVE" | b"LOLWUT" | b"SAVE" | b"BGSAVE" | b"READONLY" | b"READWRITE"
        | b"COMMAND" | b"TFCALL" | b"TFCALLASYNC" | b"MULTI" | b"EXEC" | b"DISCARD" => {
            Place::AnyNode
        }
        n if n.starts_with(b"ACL ")
            || n.starts_with(b"CLIENT ")
            || n.starts_with(b"CLUSTER ")
            || n.starts_with(b"COMMAND ")
            || n.starts_with(b"CONFIG ")
            || n.starts_with(b"MODULE ")
            || n.starts_with(b"TFUNCTION ")
            || n == b"FT.CREATE"
            || n == b"FUNCTION LIST"
            || n == b"SCRIPT SHOW" =>
        {
            match n {
                b"CLUSTER COUNTKEYSINSLOT"
                | b"CLUSTER GETKEYSINSLOT"
                | b"CLUSTER ADDSLOTS"
                | b"CLUSTER DELSLOTS"
                | b"CLUSTER DELSLOTSRANGE"
                | b"CLUSTER SETSLOT" => number(args.get(2))
                    .and_then(|s| u16::try_from(s).ok())
                    .filter(|&s| s < 16384)
                    .map_or(Place::AnyNode, |s| {
                        Place::Slot(Route::new(s, SlotAddr::Master))
                    }),
                _ => Place::AnyNode,
            }
        }
        // numkeys, then the keys.
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" | b"BLMPOP"
        | b"BZMPOP" => match number(args.get(2)) {
            Some(0) | None => Place::AnyNode,
            Some(_) => return key_at(3),
        },
        b"LMPOP" | b"SINTERCARD" | b"ZDIFF" | b"ZINTER" | b"ZINTERCARD" | b"ZMPOP" | b"ZUNION" => {
            match number(args.get(1)) {
                Some(0) | None => Place::AnyNode,
                Some(_) => return key_at(2),
            }
        }
        b"BITOP"
        | b"MEMORY USAGE"
        | b"PFDEBUG"
        | b"XGROUP CREATE"
        | b"XGROUP CREATECONSUMER"
        | b"XGROUP DELCONSUMER"
        | b"XGROUP DESTROY"
        | b"XGROUP SETID"
        | b"XINFO CONSUMERS"
        | b"XINFO GROUPS"
        | b"XINFO STREAM"
        | b"OBJECT ENCODING"
        | b"OBJECT FREQ"
        | b"OBJECT IDLETIME"
        | b"OBJECT REFCOUNT"
        | b"JSON.DEBUG" => return key_at(2),
        b"XREAD" | b"XREADGROUP" => {
            return args
                .iter()
                .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))
                .map_or((Place::AnyNode, None), |i| key_at(i + 1))
        }
        _ => return key_at(1),
    };
    (place, None)
}

/// The steps `places` (one per command, in order) become.
fn plan(places: &[Place]) -> Vec<Step> {
    let alone_exists = places.contains(&Place::Alone);
    let mut steps = Vec::new();
    let mut segment: Vec<(usize, Place)> = Vec::new();
    for (i, &p) in places.iter().enumerate() {
        // Without groups to ride along with in every step, SCRIPT LOAD
        // goes to every node on its own.
        let p = if p == Place::EveryGroup && alone_exists {
            Place::Alone
        } else {
            p
        };
        if p == Place::Alone {
            if !segment.is_empty() {
                steps.push(Step::Groups(groups(&segment)));
                segment.clear();
            }
            steps.push(Step::Alone(i));
        } else {
            segment.push((i, p));
        }
    }
    if !segment.is_empty() {
        steps.push(Step::Groups(groups(&segment)));
    }
    steps
}

/// The groups of one step's commands (none of them alone).
fn groups(segment: &[(usize, Place)]) -> Vec<Group> {
    let mut routes: Vec<Route> = Vec::new();
    let mut index: HashMap<Route, usize> = HashMap::new();
    for (_, p) in segment {
        if let Place::Slot(r) = p {
            index.entry(*r).or_insert_with(|| {
                routes.push(*r);
                routes.len() - 1
            });
        }
    }
    if routes.is_empty() {
        return vec![Group {
            route: None,
            cmds: segment.iter().map(|(i, _)| (*i, true)).collect(),
            keyed: None,
        }];
    }
    let mut groups: Vec<Group> = routes
        .iter()
        .map(|r| Group {
            route: Some(*r),
            cmds: Vec::new(),
            keyed: None,
        })
        .collect();
    for &(i, p) in segment {
        match p {
            Place::Slot(r) => {
                let g = &mut groups[index[&r]];
                g.cmds.push((i, true));
                g.keyed.get_or_insert(i);
            }
            Place::AnyNode => groups[0].cmds.push((i, true)),
            Place::EveryGroup => {
                for (g, group) in groups.iter_mut().enumerate() {
                    group.cmds.push((i, g == 0));
                }
            }
            Place::Alone => unreachable!("alone commands are steps of their own"),
        }
    }
    groups
}

/// A server's error answer as the value a pipeline holds for it; any
/// other failure is the whole pipeline's.
fn as_value(r: RedisResult<Value>) -> RedisResult<Value> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => ServerError::try_from(e).map(Value::ServerError),
    }
}

/// Runs `pipeline` on a cluster, split by slot (see the module docs), and
/// returns the replies `offset..offset + count` a single server would have
/// sent (`MULTI`'s `OK`, a `QUEUED` per command and `EXEC`'s array for an
/// atomic pipeline).
async fn split_pipeline(
    mut con: ClusterConnection,
    pipeline: &Pipeline,
    offset: usize,
    count: usize,
) -> RedisResult<Vec<Value>> {
    let cmds: Vec<&Cmd> = pipeline.cmd_iter().collect();
    let atomic = pipeline.is_transaction();
    let places: Vec<Place> = cmds.iter().map(|c| place(c)).collect();
    let steps = plan(&places);
    let key = |g: &Group| g.keyed.and_then(|i| locate(cmds[i]).1).map(<[u8]>::to_vec);
    // One group with every command once, in order: the pipeline as it is.
    if let [Step::Groups(groups)] = steps.as_slice() {
        if let [group] = groups.as_slice() {
            return send_group(
                con,
                pipeline.clone(),
                offset,
                count,
                group.route,
                key(group),
            )
            .await;
        }
    }
    let mut replies: Vec<Option<Value>> = vec![None; cmds.len()];
    let mut aborted = false;
    for step in steps {
        match step {
            Step::Alone(i) => {
                replies[i] = Some(as_value(con.req_packed_command(cmds[i]).await)?);
            }
            Step::Groups(groups) => {
                let sent = groups.iter().map(|g| {
                    let mut sub = redis::pipe();
                    if atomic {
                        sub.atomic();
                    }
                    for (i, _) in &g.cmds {
                        sub.add_command(cmds[*i].clone());
                    }
                    let n = g.cmds.len();
                    let (offset, count) = if atomic { (n + 1, 1) } else { (0, n) };
                    send_group(con.clone(), sub, offset, count, g.route, key(g))
                });
                for (g, answer) in groups.iter().zip(join_all(sent).await) {
                    let mut answer = answer?;
                    if atomic {
                        match answer.pop() {
                            Some(Value::Array(items)) if answer.is_empty() => answer = items,
                            // EXEC answered nil: aborted (a WATCHed key changed).
                            Some(Value::Nil) => {
                                aborted = true;
                                continue;
                            }
                            _ => return Err(unexpected("a transaction's EXEC")),
                        }
                    }
                    if answer.len() != g.cmds.len() {
                        return Err(unexpected("a sub-pipeline"));
                    }
                    for ((i, kept), v) in g.cmds.iter().zip(answer) {
                        if *kept {
                            replies[*i] = Some(v);
                        }
                    }
                }
            }
        }
    }
    let all = if atomic {
        let exec = if aborted {
            Value::Nil
        } else {
            Value::Array(
                replies
                    .into_iter()
                    .map(|v| v.unwrap_or(Value::Nil))
                    .collect(),
            )
        };
        std::iter::once(Value::Okay)
            .chain(std::iter::repeat_n(
                Value::SimpleString("QUEUED".into()),
                cmds.len(),
            ))
            .chain(std::iter::once(exec))
            .collect::<Vec<_>>()
    } else {
        replies
            .into_iter()
            .map(|v| v.unwrap_or(Value::Nil))
            .collect()
    };
    all.get(offset..offset.saturating_add(count))
        .map(<[Value]>::to_vec)
        .ok_or_else(|| unexpected("the requested replies"))
}

/// Sends one group's sub-pipeline to the primary of `route` (any node if
/// `None`).
///
/// redis-rs follows a `MOVED` answer to a plain pipeline (and asks for the
/// slot map again), but not one inside a transaction: the transaction is
/// aborted, and with a stale slot map (after a failover) every atomic
/// pipeline would keep failing. So when a transaction is aborted by
/// `MOVED` or `READONLY`, a harmless `EXISTS` of the group's first `key`
/// is sent to the slot — redis-rs follows its `MOVED` and refreshes the
/// slot map — and the transaction is sent once more.
async fn send_group(
    mut con: ClusterConnection,
    sub: Pipeline,
    offset: usize,
    count: usize,
    route: Option<Route>,
    key: Option<Vec<u8>>,
) -> RedisResult<Vec<Value>> {
    let routing = || {
        route.map_or(
            SingleNodeRoutingInfo::Random,
            SingleNodeRoutingInfo::SpecificNode,
        )
    };
    let atomic = sub.is_transaction();
    let retry = if atomic { Some(sub.clone()) } else { None };
    let answer = con.route_pipeline(sub, offset, count, routing()).await;
    match (answer, retry, route, key) {
        (Err(e), Some(sub), Some(route), Some(key)) if stale_slot_map(&e) => {
            let nudge = redis::cmd("EXISTS").arg(key).to_owned();
            let single = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            con.route_command(nudge, single).await?;
            con.route_pipeline(sub, offset, count, routing()).await
        }
        (answer, ..) => answer,
    }
}

/// Whether `e` is a transaction aborted because a node no longer serves
/// the slot (`MOVED`, or `READONLY` from a demoted primary).
fn stale_slot_map(e: &RedisError) -> bool {
    e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort)
        && e.clone().into_server_errors().is_some_and(|errs| {
            errs.iter().any(|(_, se)| {
                matches!(
                    se.kind(),
                    Some(redis::ServerErrorKind::Moved | redis::ServerErrorKind::ReadOnly)
                )
            })
        })
}

fn unexpected(what: &'static str) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "Redis Cluster pipeline: unexpected answer shape",
        what.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn places(pipe: &Pipeline) -> Vec<Place> {
        pipe.cmd_iter().map(place).collect()
    }

    fn slot(key: &str) -> Place {
        Place::Slot(route_of(key.as_bytes()))
    }

    #[test]
    fn commands_are_placed_like_redis_rs_routes_them() {
        let script = redis::Script::new("return 1");
        let mut inv = script.key("{a}k");
        inv.arg(1);
        let mut pipe = redis::pipe();
        pipe.cmd("TIME")
            .get("{a}x")
            .set("k", 1)
            .load_script(&script)
            .invoke_script(&inv)
            .cmd("EVAL")
            .arg("return 1")
            .arg(0)
            .del(&["{a}1", "{a}2"])
            .del(&["x", "y"])
            .cmd("PING")
            .cmd("config")
            .arg("get")
            .arg("x")
            .cmd("OBJECT")
            .arg("ENCODING")
            .arg("k")
            .cmd("SCAN")
            .arg(0)
            .cmd("XREAD")
            .arg("COUNT")
            .arg(1)
            .arg("STREAMS")
            .arg("s")
            .arg(0)
            .cmd("PUBLISH")
            .arg("ch")
            .arg("m");
        assert_eq!(
            places(&pipe),
            [
                Place::AnyNode,
                slot("{a}x"),
                slot("k"),
                Place::EveryGroup,
                slot("{a}k"),
                Place::AnyNode,
                slot("{a}1"),
                Place::Alone,
                Place::Alone,
                Place::AnyNode,
                slot("k"),
                Place::AnyNode,
                slot("s"),
                slot("ch"),
            ]
        );
        assert_ne!(slot("x"), slot("y"), "the test needs two slots");
    }

    #[test]
    fn one_slot_stays_one_group_in_one_step() {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("TIME")
            .get("{c}a")
            .pttl("{c}b")
            .hgetall("{c}c");
        let steps = plan(&places(&pipe));
        assert_eq!(
            steps,
            [Step::Groups(vec![Group {
                route: Some(route_of(b"{c}a")),
                cmds: vec![(0, true), (1, true), (2, true), (3, true)],
                keyed: Some(1),
            }])]
        );
        let mut keyless = redis::pipe();
        keyless.cmd("TIME").cmd("ECHO").arg("x");
        assert_eq!(
            plan(&places(&keyless)),
            [Step::Groups(vec![Group {
                route: None,
                cmds: vec![(0, true), (1, true)],
                keyed: None,
            }])]
        );
    }

    #[test]
    fn several_slots_become_concurrent_groups() {
        let script = redis::Script::new("return 1");
        let (a, b) = (script.key("{a}k"), script.key("{b}k"));
        let mut pipe = redis::pipe();
        pipe.load_script(&script)
            .ignore()
            .invoke_script(&a)
            .cmd("TIME")
            .invoke_script(&b)
            .get("{a}z");
        let (ra, rb) = (route_of(b"{a}"), route_of(b"{b}"));
        assert_ne!(ra, rb);
        assert_eq!(
            plan(&places(&pipe)),
            [Step::Groups(vec![
                Group {
                    route: Some(ra),
                    cmds: vec![(0, true), (1, true), (2, true), (4, true)],
                    keyed: Some(1),
                },
                Group {
                    route: Some(rb),
                    cmds: vec![(0, false), (3, true)],
                    keyed: Some(3),
                },
            ])]
        );
    }

    #[test]
    fn fanning_out_commands_split_the_pipeline_into_steps() {
        let script = redis::Script::new("return 1");
        let mut pipe = redis::pipe();
        pipe.set("{a}k", 1)
            .load_script(&script)
            .del(&["{a}k", "{b}k"])
            .get("{b}k")
            .get("{a}k");
        let (ra, rb) = (route_of(b"{a}"), route_of(b"{b}"));
        assert_eq!(
            plan(&places(&pipe)),
            [
                Step::Groups(vec![Group {
                    route: Some(ra),
                    cmds: vec![(0, true)],
                    keyed: Some(0),
                }]),
                Step::Alone(1),
                Step::Alone(2),
                Step::Groups(vec![
                    Group {
                        route: Some(rb),
                        cmds: vec![(3, true)],
                        keyed: Some(3),
                    },
                    Group {
                        route: Some(ra),
                        cmds: vec![(4, true)],
                        keyed: Some(4),
                    },
                ]),
            ]
        );
    }
}
