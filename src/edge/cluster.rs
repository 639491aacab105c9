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
use crate::options::ClusterRouting;
use crate::relay::directory::{
    Keys, Lease, Owner, Placement, Routing, instance_id_problem, renewal_interval,
};
use crate::relay::hub::Hub;
use crate::relay::ids::JoinCode;
use anyhow::{Context as _, bail};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

/// Longest any one directory call may take, connecting included.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// Codes whose release waits for the maintenance task; beyond it a release is dropped and the
/// code stays pointing here until this instance drains (joins to it get `UNKNOWN_SERVER` here).
const RELEASE_QUEUE: usize = 16 * 1024;

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

/// Claims a code unless a live owner holds it. KEYS: the code key, this run's rooms set, this
/// instance's key. ARGV: owner value, boot id, prefix, code. Replies 1 claimed, 0 taken, -1 when
/// this process does not hold its lease (it must not hand out codes the cluster thinks dead).
const CLAIM: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return -1 end
local held = redis.call('GET', KEYS[1])
if held then
  local instance, boot = string.match(held, '^(%S+) (%S+)$')
  if instance and redis.call('GET', ARGV[3] .. ':instance:' .. instance) == boot then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[4])
return 1
";

/// The owner (`instance boot`) of a code, if its lease is live; a dead owner's entry is removed.
/// KEYS: the code key. ARGV: prefix.
const LOOKUP: &str = r"
local held = redis.call('GET', KEYS[1])
if not held then return false end
local instance, boot = string.match(held, '^(%S+) (%S+)$')
if instance and redis.call('GET', ARGV[1] .. ':instance:' .. instance) == boot then return held end
redis.call('DEL', KEYS[1])
return false
";

/// Gives a code up if this run still owns it. KEYS: the code key, this run's rooms set.
/// ARGV: owner value, code.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

/// Claims again every code of this run after its lease was taken afresh, unless a live owner
/// took it meanwhile. KEYS: this run's rooms set. ARGV: owner value, prefix, codes…
/// Replies with the codes lost to other owners.
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
  end
end
return lost
";

/// Removes every code and the lease of this run, for a drain. KEYS: this run's rooms set, the
/// instance key, the lease index. ARGV: owner value, boot id, prefix.
const DRAIN: &str = r"
for _, code in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[3] .. ':code:' .. code
  if redis.call('GET', key) == ARGV[1] then redis.call('DEL', key) end
end
redis.call('DEL', KEYS[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
";

/// Removes the codes of instances whose lease lapsed (killed, or cut off from Redis), a few
/// instances per call. KEYS: the lease index. ARGV: prefix, limit. Replies with how many.
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
      if redis.call('GET', key) == owner then redis.call('DEL', key) end
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

/// Why a directory step could not be taken now.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// Redis answered with an error, refused the connection, or took longer than
    /// [`REDIS_TIMEOUT`].
    #[error("the cluster directory is unreachable: {0}")]
    Redis(String),
    /// This process does not hold its lease, so its claims would be treated as dead.
    #[error("this instance does not hold its lease in the cluster directory")]
    NoLease,
}

impl From<RedisError> for Unavailable {
    fn from(error: RedisError) -> Self {
        Unavailable::Redis(error.to_string())
    }
}

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
    /// The links with other instances, in pubsub routing.
    pubsub: Option<Arc<PubSub>>,
    pending_releases: tokio::sync::Mutex<mpsc::Receiver<JoinCode>>,
    scripts: Scripts,
}

struct Scripts {
    lease: Script,
    claim: Script,
    lookup: Script,
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
            pending_releases: tokio::sync::Mutex::new(pending),
            scripts: Scripts {
                lease: Script::new(LEASE),
                claim: Script::new(CLAIM),
                lookup: Script::new(LOOKUP),
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
    /// claimed in Redis, drawing again on a clash with another instance's code.
    pub async fn claim_code(
        &self,
        hub: &Hub,
        metrics: &Metrics,
    ) -> Result<Option<JoinCode>, Unavailable> {
        for _ in 0..crate::relay::hub::MAX_DRAWS {
            let Ok(code) = hub.fresh_code() else {
                return Ok(None);
            };
            let mut invocation = self.scripts.claim.prepare_invoke();
            invocation
                .key(self.keys.code(&code))
                .key(self.keys.rooms(&self.owner))
                .key(self.keys.instance(&self.owner.instance))
                .arg(self.owner.value())
                .arg(&self.owner.boot)
                .arg(self.keys.prefix())
                .arg(code.as_str());
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
        invocation.key(self.keys.code(code)).arg(self.keys.prefix());
        let call = self.invoke::<Option<String>>(&invocation);
        let placement = call.await.inspect_err(|_| metrics.directory("error"))?;
        let placement = Placement::of(placement.as_deref(), &self.owner.instance);
        metrics.directory(match placement {
            Placement::Here => "lookup_here",
            Placement::Elsewhere(_) => "lookup_elsewhere",
            Placement::Nowhere => "lookup_nowhere",
        });
        Ok(placement)
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
            .arg(self.keys.prefix());
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
        let mut tick = tokio::time::interval(renewal_interval(self.lease_ttl));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.renew(&hub, &metrics).await,
                count = releases.recv_many(&mut batch, 256) => {
                    if count == 0 {
                        return;
                    }
                    for code in batch.drain(..) {
                        self.release_now(&code).await;
                    }
                }
            }
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
                .arg(SWEEP_LIMIT);
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
            .arg(self.owner.value())
            .arg(code.as_str());
        let call = self.invoke::<i64>(&invocation);
        if let Err(error) = call.await {
            warn!(%error, code = code.as_str(), "cluster directory: release failed; the code lapses with this instance's lease");
        }
    }
}

/// A Redis call cut off at [`REDIS_TIMEOUT`].
pub async fn bounded<T>(
    call: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, Unavailable> {
    match timeout(REDIS_TIMEOUT, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Unavailable::Redis(format!(
            "no answer within {REDIS_TIMEOUT:?}"
        ))),
    }
}
