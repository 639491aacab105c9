//! The cluster directory in Redis (`--cluster-redis-url`): claiming join codes so they stay
//! unique across instances, finding a code's owner, and the instance's lease. The rules (key
//! names, owners, where a client is sent) are `relay::directory`'s; this file is the round trips.
//!
//! Every directory step is one Lua script, so it is atomic and costs one command. Every call is
//! bounded by [`REDIS_TIMEOUT`]: a Redis that is down, stalled or restarting makes it fail fast,
//! and the caller refuses the peer with "try again later" rather than wait.

use crate::config::ClusterConfig;
use crate::edge::metrics::Metrics;
use crate::edge::pubsub::{Parts, PubSub};
use crate::edge::redis::{REDIS_TIMEOUT, Unavailable, bounded};
use crate::options::ClusterRouting;
use crate::relay::directory::{
    Keys, Lease, Owner, Placement, RULES_FIELD, Routing, SERVER_FIELD, instance_id_problem,
    read_record, renewal_interval, rules_value,
};
use crate::relay::hub::{Hub, PeerId, RecordChange, Recorder, RoomRules};
use crate::relay::ids::{ClientId, JoinCode};
use crate::relay::resume::TokenHash;
use anyhow::{Context as _, bail};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands as _, Script};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// Codes whose release waits for the maintenance task; beyond it a release is dropped and the
/// code stays pointing here until this instance drains (joins to it get `UNKNOWN_SERVER` here).
const RELEASE_QUEUE: usize = 16 * 1024;

/// Changes to rooms' records waiting for the maintenance task; beyond it a change is dropped
/// (counted as `record_dropped`), and that peer may fail to resume on another instance.
const RECORD_QUEUE: usize = 16 * 1024;

/// Record changes written per script call.
const RECORD_BATCH: usize = 512;

/// Codes re-claimed per script call after the lease was taken afresh.
const REASSERT_BATCH: usize = 512;

/// Lapsed instances one sweep cleans up.
const SWEEP_LIMIT: usize = 8;

/// Takes or renews the instance's lease. KEYS: the instance key, the lease index.
/// ARGV: boot id, TTL in ms, owner value. Replies 1 renewed, 2 taken afresh, 0 held by another.
const LEASE: &str = r"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2]), ARGV[3])
if held then return 1 end
return 2
";

/// Claims a code unless a live owner holds it, and starts its room's record when sessions
/// resume. KEYS: the code key, this run's rooms set, this instance's key, the room's record.
/// ARGV: owner value, boot id, prefix, code, the server's token hash (empty: no record), the
/// rules. Replies 1 claimed, 0 taken, -1 when this process does not hold its lease (it must not
/// hand out codes the cluster thinks dead).
const CLAIM: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return -1 end
local held = redis.call('GET', KEYS[1])
if held then
  local instance, boot = string.match(held, '^(%S+) (%S+)$')
  if instance and redis.call('GET', ARGV[3] .. ':instance:' .. instance) == boot then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[4])
if ARGV[5] ~= '' then redis.call('HSET', KEYS[4], 'server', ARGV[5], 'rules', ARGV[6]) end
return 1
";

/// The owner (`instance boot`) of a code, if its lease is live; a dead owner's entry is removed.
/// Without a live owner, the server's token hash in a record that outlives it, as a one-element
/// array. KEYS: the code key, the room's record. ARGV: prefix.
const LOOKUP: &str = r"
local held = redis.call('GET', KEYS[1])
if held then
  local instance, boot = string.match(held, '^(%S+) (%S+)$')
  if instance and redis.call('GET', ARGV[1] .. ':instance:' .. instance) == boot then return held end
  redis.call('DEL', KEYS[1])
end
local server = redis.call('HGET', KEYS[2], 'server')
if server then return {server} end
return false
";

/// Takes a room over for its server, whose token's hash the caller has checked against the
/// record: from a dead or drained owner, or from the live one named (in pubsub routing, where a
/// server resumes wherever it lands). KEYS: the code key, the room's record, this run's rooms
/// set, this instance's key. ARGV: owner value, boot id, prefix, code, the record's server hash
/// as checked, the server's fresh token hash, the live owner it may be taken from (or empty).
/// Replies `taken` and the whole record (field, value…); `live` when another live owner holds
/// the code, `gone` when the record changed or lapsed, `nolease` when this process does not
/// hold its lease.
const TAKE: &str = r"
if redis.call('GET', KEYS[4]) ~= ARGV[2] then return {'nolease'} end
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[7] then
  local instance, boot = string.match(held, '^(%S+) (%S+)$')
  if instance and redis.call('GET', ARGV[3] .. ':instance:' .. instance) == boot then return {'live'} end
end
if redis.call('HGET', KEYS[2], 'server') ~= ARGV[5] then return {'gone'} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[4])
redis.call('HSET', KEYS[2], 'server', ARGV[6])
redis.call('PERSIST', KEYS[2])
local record = redis.call('HGETALL', KEYS[2])
table.insert(record, 1, 'taken')
return record
";

/// Writes changes to the records of rooms this run still owns. ARGV: owner value, prefix, then
/// per change its code, field and value (empty: the field is removed).
const RECORD: &str = r"
for i = 3, #ARGV - 2, 3 do
  if redis.call('GET', ARGV[2] .. ':code:' .. ARGV[i]) == ARGV[1] then
    local record = ARGV[2] .. ':resume:' .. ARGV[i]
    if ARGV[i + 2] == '' then
      redis.call('HDEL', record, ARGV[i + 1])
    else
      redis.call('HSET', record, ARGV[i + 1], ARGV[i + 2])
    end
  end
end
return 1
";

/// Gives a code and its room's record up if this run still owns it. KEYS: the code key, this
/// run's rooms set, the room's record. ARGV: owner value, code.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[3])
end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

/// Claims again every code of this run after its lease was taken afresh, unless a live owner
/// took it meanwhile, and keeps the room's record (a sweep may have set it to lapse).
/// KEYS: this run's rooms set. ARGV: owner value, prefix, codes… Replies with the codes lost to
/// other owners.
const REASSERT: &str = r"
local lost = {}
for i = 3, #ARGV do
  local key = ARGV[2] .. ':code:' .. ARGV[i]
  local held = redis.call('GET', key)
  local live = false
  if held and held ~= ARGV[1] then
    local instance, boot = string.match(held, '^(%S+) (%S+)$')
    live = instance and redis.call('GET', ARGV[2] .. ':instance:' .. instance) == boot
  end
  if live then
    table.insert(lost, ARGV[i])
  else
    redis.call('SET', key, ARGV[1])
    redis.call('SADD', KEYS[1], ARGV[i])
    redis.call('PERSIST', ARGV[2] .. ':resume:' .. ARGV[i])
  end
end
return lost
";

/// Removes every code and the lease of this run, for a drain; each room's record is kept for
/// the resume window. KEYS: this run's rooms set, the instance key, the lease index. ARGV: owner
/// value, boot id, prefix, the resume window in ms (0: records go too).
const DRAIN: &str = r"
for _, code in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[3] .. ':code:' .. code
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    local record = ARGV[3] .. ':resume:' .. code
    if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', record, ARGV[4]) else redis.call('DEL', record) end
  end
end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
";

/// Removes the codes of instances whose lease lapsed (killed, or cut off from Redis), a few
/// instances per call; each room's record no one took over is kept for the resume window.
/// KEYS: the lease index. ARGV: prefix, limit, the resume window in ms (0: records go too).
/// Replies with how many.
const SWEEP: &str = r"
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[2]))
for _, owner in ipairs(lapsed) do
  local instance, boot = string.match(owner, '^(%S+) (%S+)$')
  if instance then
    local rooms = ARGV[1] .. ':rooms:' .. instance .. ':' .. boot
    for _, code in ipairs(redis.call('SMEMBERS', rooms)) do
      local key = ARGV[1] .. ':code:' .. code
      local held = redis.call('GET', key)
      if held == owner then redis.call('DEL', key) end
      if not held or held == owner then
        local record = ARGV[1] .. ':resume:' .. code
        if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', record, ARGV[3]) else redis.call('DEL', record) end
      end
    end
    redis.call('DEL', rooms)
  end
  redis.call('ZREM', KEYS[1], owner)
end
return #lapsed
";

/// Which of the given owners (`instance boot`) no longer hold their lease. ARGV: prefix, owners…
const LAPSED: &str = r"
local lapsed = {}
for i = 2, #ARGV do
  local instance, boot = string.match(ARGV[i], '^(%S+) (%S+)$')
  if not instance or redis.call('GET', ARGV[1] .. ':instance:' .. instance) ~= boot then
    table.insert(lapsed, ARGV[i])
  end
end
return lapsed
";

/// Which instance a `--cluster-routing` and the environment make this, and how it routes.
pub fn resolve(
    config: &ClusterConfig,
    fly_machine_id: Option<String>,
) -> anyhow::Result<(Routing, String)> {
    let routing = match (config.routing, &fly_machine_id) {
        (ClusterRouting::FlyReplay, _) | (ClusterRouting::Auto, Some(_)) => Routing::FlyReplay,
        (ClusterRouting::Pubsub, _) | (ClusterRouting::Auto, None) => Routing::PubSub,
    };
    let instance = match (&config.instance_id, fly_machine_id) {
        (Some(id), _) => id.clone(),
        (None, Some(machine)) => machine,
        (None, None) => nanoid::nanoid!(12, &ID_ALPHABET),
    };
    if let Some(problem) = instance_id_problem(&instance) {
        bail!("the instance id {instance:?} {problem}: set --instance-id");
    }
    Ok((routing, instance))
}

/// Random instance ids: lower-case letters and digits, like Fly machine ids.
const ID_ALPHABET: [char; 36] = [
    'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', 'p', 'q', 'r', 's',
    't', 'u', 'v', 'w', 'x', 'y', 'z', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
];

/// The directory as this process sees it.
pub struct Cluster {
    redis: ConnectionManager,
    keys: Keys,
    owner: Owner,
    routing: Routing,
    lease_ttl: Duration,
    /// Whether the last lease renewal succeeded: for `/metrics` and the logs only; every step
    /// checks the lease in Redis itself.
    up: AtomicBool,
    releases: mpsc::Sender<JoinCode>,
    /// `--resume-window`: how long a dead or drained owner's records are kept (zero: not kept,
    /// and none are written).
    resume_window: Duration,
    /// The links with other instances, in pubsub routing.
    pubsub: Option<Arc<PubSub>>,
    pending_releases: tokio::sync::Mutex<mpsc::Receiver<JoinCode>>,
    pending_records: tokio::sync::Mutex<mpsc::Receiver<RecordChange>>,
    scripts: Scripts,
}

struct Scripts {
    lease: Script,
    claim: Script,
    lookup: Script,
    take: Script,
    record: Script,
    release: Script,
    reassert: Script,
    drain: Script,
    sweep: Script,
    lapsed: Script,
}

/// What a cluster member shares with the rest of the relay.
pub struct Attachments {
    /// The registry remote members join.
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    /// Where forwarders are tracked, with the sessions.
    pub tracker: TaskTracker,
    /// Cancelled when the relay shuts down.
    pub shutdown: CancellationToken,
    /// `--send-queue-bytes`, for remote members' queues.
    pub queue_bytes: usize,
    /// `--max-connections`, the most remote members held.
    pub max_members: usize,
    /// `--resume-window`, for how long rooms' records outlive their owner.
    pub resume_window: Duration,
}

/// How a server fared taking over its room from a dead or drained owner.
pub enum Takeover {
    /// The room is this instance's now, with the rules and members its record held.
    Taken(RoomRules, Vec<(ClientId, TokenHash)>),
    /// A live owner holds the code.
    Live,
    /// The record changed or lapsed since it was read.
    Gone,
}

/// Hands the hub's record changes to the maintenance task without waiting.
struct RecordQueue {
    changes: mpsc::Sender<RecordChange>,
    metrics: Arc<Metrics>,
}

impl Recorder for RecordQueue {
    fn record(&self, change: RecordChange) {
        if self.changes.try_send(change).is_err() {
            self.metrics.directory("record_dropped");
        }
    }
}

impl Cluster {
    /// Connects to the directory and takes this instance's lease. A Redis that cannot be reached
    /// is not fatal: the relay starts, refuses what needs the directory, and takes the lease when
    /// Redis answers. A lease another live process keeps renewing is: two processes must not
    /// share an instance id. One that lapses within a TTL was a predecessor's, and is waited out.
    pub async fn start(
        config: &ClusterConfig,
        fly_machine_id: Option<String>,
        attachments: Attachments,
    ) -> anyhow::Result<Arc<Cluster>> {
        let (routing, instance) = resolve(config, fly_machine_id)?;
        // The error names the URL's problem without echoing the URL, which may hold a password.
        let client = redis::Client::open(config.redis_url.as_str()).map_err(|error| {
            anyhow::anyhow!(
                "--cluster-redis-url is not a Redis URL ({:?})",
                error.kind()
            )
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(REDIS_TIMEOUT);
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .context("--cluster-redis-url")?;
        let (releases, pending) = mpsc::channel(RELEASE_QUEUE);
        let (records, pending_records) = mpsc::channel(RECORD_QUEUE);
        if !attachments.resume_window.is_zero() {
            let queue = RecordQueue {
                changes: records,
                metrics: attachments.metrics.clone(),
            };
            attachments.hub.set_recorder(Arc::new(queue));
        }
        let keys = Keys::new(&config.prefix);
        let owner = Owner {
            instance,
            boot: nanoid::nanoid!(),
        };
        let pubsub = (routing == Routing::PubSub).then(|| {
            let parts = Parts {
                client,
                redis: redis.clone(),
                keys: keys.clone(),
                me: owner.clone(),
                hub: attachments.hub,
                metrics: attachments.metrics,
                tracker: attachments.tracker,
                queue_bytes: attachments.queue_bytes,
                max_members: attachments.max_members,
                resume_window: attachments.resume_window,
            };
            PubSub::start(parts, attachments.shutdown)
        });
        let cluster = Cluster {
            redis,
            keys,
            owner,
            routing,
            pubsub,
            lease_ttl: config.lease_ttl,
            up: AtomicBool::new(false),
            releases,
            resume_window: attachments.resume_window,
            pending_releases: tokio::sync::Mutex::new(pending),
            pending_records: tokio::sync::Mutex::new(pending_records),
            scripts: Scripts {
                lease: Script::new(LEASE),
                claim: Script::new(CLAIM),
                lookup: Script::new(LOOKUP),
                take: Script::new(TAKE),
                record: Script::new(RECORD),
                release: Script::new(RELEASE),
                reassert: Script::new(REASSERT),
                drain: Script::new(DRAIN),
                sweep: Script::new(SWEEP),
                lapsed: Script::new(LAPSED),
            },
        };
        cluster.take_lease_at_start().await?;
        Ok(Arc::new(cluster))
    }

    async fn take_lease_at_start(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.lease_ttl + REDIS_TIMEOUT;
        loop {
            match self.lease().await {
                Ok(Lease::Renewed | Lease::Acquired) => {
                    self.up.store(true, Ordering::Relaxed);
                    info!(
                        instance = self.owner.instance,
                        routing = %self.routing,
                        "cluster directory reached; lease taken"
                    );
                    return Ok(());
                }
                Ok(Lease::HeldByAnother) if Instant::now() < deadline => {
                    tokio::time::sleep(renewal_interval(self.lease_ttl)).await;
                }
                Ok(Lease::HeldByAnother) => bail!(
                    "--instance-id {}: another live relay holds this instance id in the cluster \
                     directory; give each instance its own",
                    self.owner.instance
                ),
                Err(error) => {
                    warn!(
                        %error,
                        "cluster directory unreachable at start: /server and joins to other \
                         instances get SERVER_UNAVAILABLE (1013) until it answers"
                    );
                    return Ok(());
                }
            }
        }
    }

    /// This instance's id, as `fly-replay: instance=` names it.
    pub fn instance(&self) -> &str {
        &self.owner.instance
    }

    /// How clients that reached the wrong instance get to their room.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// The links with other instances, in pubsub routing.
    pub fn pubsub(&self) -> Option<&Arc<PubSub>> {
        self.pubsub.as_ref()
    }

    /// Whether the last lease renewal succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Runs a script on this process's connection, cut off at [`REDIS_TIMEOUT`].
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut redis = self.redis.clone();
        bounded(invocation.invoke_async::<T>(&mut redis)).await
    }

    async fn lease(&self) -> Result<Lease, Unavailable> {
        let mut invocation = self.scripts.lease.prepare_invoke();
        invocation
            .key(self.keys.instance(&self.owner.instance))
            .key(self.keys.instances())
            .arg(&self.owner.boot)
            .arg(self.lease_ttl.as_millis() as u64)
            .arg(self.owner.value());
        let call = self.invoke::<i64>(&invocation);
        Ok(Lease::from_reply(call.await?))
    }

    /// Claims a fresh code for a server registering here: drawn locally (free in `hub`), then
    /// claimed in Redis, drawing again on a clash with another instance's code. With `token`
    /// (sessions resume), the room's record starts with it and `rules`.
    pub async fn claim_code(
        &self,
        hub: &Hub,
        metrics: &Metrics,
        token: Option<TokenHash>,
        rules: RoomRules,
    ) -> Result<Option<JoinCode>, Unavailable> {
        let token = token.map_or_else(String::new, |token| token.to_text());
        for _ in 0..crate::relay::hub::MAX_DRAWS {
            let Ok(code) = hub.fresh_code() else {
                return Ok(None);
            };
            let mut invocation = self.scripts.claim.prepare_invoke();
            invocation
                .key(self.keys.code(&code))
                .key(self.keys.rooms(&self.owner))
                .key(self.keys.instance(&self.owner.instance))
                .key(self.keys.record(&code))
                .arg(self.owner.value())
                .arg(&self.owner.boot)
                .arg(self.keys.prefix())
                .arg(code.as_str())
                .arg(&token)
                .arg(rules_value(rules));
            let call = self.invoke::<i64>(&invocation);
            match call.await {
                Ok(1) => {
                    metrics.directory("claimed");
                    return Ok(Some(code));
                }
                Ok(0) => metrics.directory("clash"),
                Ok(_) => {
                    metrics.directory("error");
                    return Err(Unavailable::NoLease);
                }
                Err(error) => {
                    metrics.directory("error");
                    return Err(error);
                }
            }
        }
        Ok(None)
    }

    /// Where the room with `code` lives.
    pub async fn lookup(
        &self,
        code: &JoinCode,
        metrics: &Metrics,
    ) -> Result<Placement, Unavailable> {
        let mut invocation = self.scripts.lookup.prepare_invoke();
        invocation
            .key(self.keys.code(code))
            .key(self.keys.record(code))
            .arg(self.keys.prefix());
        let call = self.invoke::<redis::Value>(&invocation);
        let placement = match call.await.inspect_err(|_| metrics.directory("error"))? {
            redis::Value::Array(server) => match server.as_slice() {
                [redis::Value::BulkString(hash)] => std::str::from_utf8(hash)
                    .ok()
                    .and_then(TokenHash::from_text)
                    .map_or(Placement::Nowhere, Placement::Orphaned),
                _ => Placement::Nowhere,
            },
            redis::Value::BulkString(owner) => {
                let owner = std::str::from_utf8(&owner).ok();
                Placement::of(owner, &self.owner.instance)
            }
            _ => Placement::Nowhere,
        };
        metrics.directory(match placement {
            Placement::Here => "lookup_here",
            Placement::Elsewhere(_) => "lookup_elsewhere",
            Placement::Orphaned(_) => "lookup_orphaned",
            Placement::Nowhere => "lookup_nowhere",
        });
        Ok(placement)
    }

    /// The hash of the server's token that the record of the room with `code` holds.
    pub async fn server_token(&self, code: &JoinCode) -> Result<Option<TokenHash>, Unavailable> {
        let mut redis = self.redis.clone();
        let key = self.keys.record(code);
        let held = bounded(redis.hget::<_, _, Option<String>>(key, SERVER_FIELD)).await?;
        Ok(held.as_deref().and_then(TokenHash::from_text))
    }

    /// Takes over the room with `code` for its server, from a dead or drained owner or from the
    /// live owner `from`: `checked` is the server's token hash as the record held it (the
    /// caller compared it with the token presented), `fresh` the hash of the token its HELLO
    /// will carry.
    pub async fn take_over(
        &self,
        code: &JoinCode,
        (checked, fresh): (TokenHash, TokenHash),
        from: Option<&Owner>,
        max_members: usize,
        metrics: &Metrics,
    ) -> Result<Takeover, Unavailable> {
        let mut invocation = self.scripts.take.prepare_invoke();
        invocation
            .key(self.keys.code(code))
            .key(self.keys.record(code))
            .key(self.keys.rooms(&self.owner))
            .key(self.keys.instance(&self.owner.instance))
            .arg(self.owner.value())
            .arg(&self.owner.boot)
            .arg(self.keys.prefix())
            .arg(code.as_str())
            .arg(checked.to_text())
            .arg(fresh.to_text())
            .arg(from.map_or_else(String::new, Owner::value));
        let call = self.invoke::<Vec<String>>(&invocation);
        let reply = call.await.inspect_err(|_| metrics.directory("error"))?;
        match reply.split_first() {
            Some((status, record)) if status == "taken" => {
                metrics.directory("reclaimed");
                let (rules, members) = read_record(record, max_members);
                Ok(Takeover::Taken(rules, members))
            }
            Some((status, _)) if status == "live" => Ok(Takeover::Live),
            Some((status, _)) if status == "nolease" => {
                metrics.directory("error");
                Err(Unavailable::NoLease)
            }
            _ => Ok(Takeover::Gone),
        }
    }

    /// Gives `code` up once its server has left, in the background; never waits.
    pub fn release(&self, code: JoinCode) {
        if self.releases.try_send(code).is_err() {
            warn!(
                code = code.as_str(),
                "release queue full: the code stays in the directory until this instance drains"
            );
        }
    }

    /// Removes every code and the lease of this process at once, so that the directory stops
    /// pointing at a draining instance without waiting a TTL.
    pub async fn drain(&self) {
        let mut invocation = self.scripts.drain.prepare_invoke();
        invocation
            .key(self.keys.rooms(&self.owner))
            .key(self.keys.instance(&self.owner.instance))
            .key(self.keys.instances())
            .arg(self.owner.value())
            .arg(&self.owner.boot)
            .arg(self.keys.prefix())
            .arg(self.resume_window.as_millis() as u64);
        let call = self.invoke::<i64>(&invocation);
        match call.await {
            Ok(_) => info!("cluster directory: codes and lease released"),
            Err(error) => {
                warn!(%error, "cluster directory: release on drain failed; the codes lapse with the lease")
            }
        }
    }

    /// Renews the lease every third of its TTL, re-claims every live code when the lease had to
    /// be taken afresh (Redis restarted empty, or the lease lapsed while Redis was unreachable),
    /// sweeps lapsed instances, and sends releases. Runs until `shutdown`.
    pub async fn maintain(
        self: Arc<Cluster>,
        hub: Hub,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) {
        let mut releases = self.pending_releases.lock().await;
        let mut records = self.pending_records.lock().await;
        let mut tick = tokio::time::interval(renewal_interval(self.lease_ttl));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        let mut changes = Vec::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.renew(&hub, &metrics).await,
                count = releases.recv_many(&mut batch, 256) => {
                    if count == 0 {
                        return;
                    }
                    // A server superseded by its own resume here ends its old session as a
                    // leave: its room lives on, and so do its code and record.
                    for code in batch.drain(..).filter(|code| !hub.holds(code)) {
                        self.release_now(&code).await;
                    }
                }
                count = records.recv_many(&mut changes, RECORD_BATCH), if !records.is_closed() => {
                    if count > 0 {
                        self.write_records(&changes, &metrics).await;
                    }
                    changes.clear();
                }
            }
        }
    }

    /// Writes what changed in rooms' records, in one script call. A change that fails is
    /// dropped (counted as `record_dropped`): its peer may then fail to resume on another
    /// instance, never on this one.
    async fn write_records(&self, changes: &[RecordChange], metrics: &Metrics) {
        let mut invocation = self.scripts.record.prepare_invoke();
        invocation.arg(self.owner.value()).arg(self.keys.prefix());
        for change in changes {
            let (code, field, value) = match *change {
                RecordChange::Token { code, peer, token } => {
                    let field = match peer {
                        PeerId::Server(_) => SERVER_FIELD,
                        PeerId::Client(ref id) => id.as_str(),
                    };
                    let value = token.map_or_else(String::new, |token| token.to_text());
                    (code, field.to_owned(), value)
                }
                RecordChange::Rules { code, rules } => {
                    (code, RULES_FIELD.to_owned(), rules_value(rules).to_owned())
                }
            };
            invocation.arg(code.as_str()).arg(field).arg(value);
        }
        let call = self.invoke::<i64>(&invocation);
        if let Err(error) = call.await {
            metrics.directories("record_dropped", changes.len());
            debug!(%error, "cluster directory: writing rooms' records failed");
        }
    }

    async fn renew(&self, hub: &Hub, metrics: &Metrics) {
        let lease = self.lease().await;
        let was_up = self.up.swap(
            matches!(lease, Ok(Lease::Renewed | Lease::Acquired)),
            Ordering::Relaxed,
        );
        match lease {
            Ok(Lease::Renewed) => {}
            Ok(Lease::Acquired) => {
                if !was_up {
                    info!("cluster directory reached again; lease taken");
                }
                self.reassert(hub, metrics).await;
            }
            Ok(Lease::HeldByAnother) => error!(
                instance = self.owner.instance,
                "another live relay holds this instance id: this one refuses /server and \
                 cross-instance joins until it stops"
            ),
            Err(error) if was_up => {
                warn!(%error, "cluster directory lost: local rooms go on; /server and joins to other instances get 1013")
            }
            Err(_) => {}
        }
        if let Some(pubsub) = &self.pubsub {
            if self.is_up() {
                pubsub.settle();
                self.close_links_with_lapsed(pubsub).await;
            } else {
                pubsub.fault("directory_lost", "the lease could not be renewed");
            }
        }
        if self.is_up() {
            let mut invocation = self.scripts.sweep.prepare_invoke();
            invocation
                .key(self.keys.instances())
                .arg(self.keys.prefix())
                .arg(SWEEP_LIMIT)
                .arg(self.resume_window.as_millis() as u64);
            let call = self.invoke::<i64>(&invocation);
            if let Ok(swept @ 1..) = call.await {
                info!(
                    swept,
                    "cluster directory: removed the codes of lapsed instances"
                );
            }
        }
    }

    /// Claims again every code live here; a room whose code another instance took meanwhile is
    /// closed (`CODE_LOST`), since clients can no longer find it.
    async fn reassert(&self, hub: &Hub, metrics: &Metrics) {
        let codes = hub.server_codes();
        for chunk in codes.chunks(REASSERT_BATCH) {
            let mut invocation = self.scripts.reassert.prepare_invoke();
            invocation
                .key(self.keys.rooms(&self.owner))
                .arg(self.owner.value())
                .arg(self.keys.prefix());
            for code in chunk {
                invocation.arg(code.as_str());
            }
            let call = self.invoke::<Vec<String>>(&invocation);
            match call.await {
                Ok(lost) => {
                    for code in lost.iter().filter_map(|code| JoinCode::parse(code)) {
                        metrics.directory("lost");
                        warn!(
                            code = code.as_str(),
                            "join code taken by another instance while the directory was unreachable: room closed"
                        );
                        hub.close_server(code, crate::relay::outcome::CODE_LOST);
                    }
                }
                Err(error) => {
                    warn!(%error, "cluster directory: re-claiming live codes failed; retried at the next renewal");
                    self.up.store(false, Ordering::Relaxed);
                    return;
                }
            }
        }
        if !codes.is_empty() {
            info!(
                codes = codes.len(),
                "cluster directory: live codes claimed again"
            );
        }
    }

    /// Closes the links with processes whose lease lapsed: killed, or cut off from Redis.
    async fn close_links_with_lapsed(&self, pubsub: &PubSub) {
        let peers = pubsub.peers();
        if peers.is_empty() {
            return;
        }
        let mut invocation = self.scripts.lapsed.prepare_invoke();
        invocation.arg(self.keys.prefix());
        for peer in &peers {
            invocation.arg(peer.value());
        }
        let call = self.invoke::<Vec<String>>(&invocation);
        match call.await {
            Ok(lapsed) => {
                let lapsed: Vec<Owner> = lapsed.iter().filter_map(|o| Owner::parse(o)).collect();
                pubsub.owners_gone(&lapsed);
            }
            Err(error) => debug!(%error, "cluster links: checking other instances' leases failed"),
        }
    }

    async fn release_now(&self, code: &JoinCode) {
        let mut invocation = self.scripts.release.prepare_invoke();
        invocation
            .key(self.keys.code(code))
            .key(self.keys.rooms(&self.owner))
            .key(self.keys.record(code))
            .arg(self.owner.value())
            .arg(code.as_str());
        let call = self.invoke::<i64>(&invocation);
        if let Err(error) = call.await {
            warn!(%error, code = code.as_str(), "cluster directory: release failed; the code lapses with this instance's lease");
        }
    }
}
