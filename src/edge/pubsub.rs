//! Forwarding between instances over Redis pub/sub (`--cluster-routing pubsub`): the publisher,
//! the subscription and the forwarders. What each message does is `relay::link`'s.
//!
//! Each process hears its own channel (`PREFIX:link:INSTANCE:BOOT`) and one every process hears
//! (`PREFIX:links`). One task publishes everything, in order, pipelined, so frames of one pair keep
//! their order; its queue is bounded in bytes. Pub/sub delivers at most once, so each way a
//! message can be lost ends the links it could concern: a publish that fails or times out, one
//! that no process heard, the subscription dropping or not answering a ping, the queue filling.
//! After a loss this process also owes the others a *reset*, which tells them to drop their links
//! with it: some of theirs may be waiting for a message that never comes.

use crate::edge::metrics::Metrics;
use crate::edge::redis::{REDIS_TIMEOUT, bounded};
use crate::relay::directory::{Keys, Owner};
use crate::relay::hub::{Hub, PeerId};
use crate::relay::ids::JoinCode;
use crate::relay::link::{
    self, Forwarder, Greet, Guest, Jammed, Links, Received, Resume, Severance, Severed,
};
use crate::relay::link_wire::{self as wire, Wire};
use crate::relay::outbox::Outbox;
use crate::relay::outcome::{ROOM_UNREACHABLE, Refusal};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// Longest a client waits for the owner to answer its join before it is told to try again.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Most bytes of messages waiting to be published. Beyond it Redis is not keeping up, and the
/// links are closed rather than let memory grow.
const PUBLISH_QUEUE_BYTES: usize = 32 * 1024 * 1024;

/// Most messages one pipeline publishes.
const PUBLISH_BATCH: usize = 256;

/// How often the subscription is pinged: a stalled Redis sends nothing and closes nothing.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// Pause before subscribing again after the subscription was lost or could not be made.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(500);

/// Where a message goes.
enum Channel {
    /// One process's channel.
    To(Arc<Owner>),
    /// Every process's.
    All,
}

struct Outgoing {
    channel: Channel,
    text: String,
    frames: usize,
    /// Its bytes' place in the queue, given back once it is published.
    _room: OwnedSemaphorePermit,
}

/// The way out: [`PubSub`]'s queue, as [`link::Courier`].
struct Courier {
    queue: UnboundedSender<Outgoing>,
    room: Arc<Semaphore>,
}

impl Courier {
    fn queue(&self, channel: Channel, text: String, frames: usize) -> Result<(), Jammed> {
        let bytes = u32::try_from(text.len().max(1)).map_err(|_| Jammed)?;
        let room = self.room.clone().try_acquire_many_owned(bytes);
        let outgoing = Outgoing {
            channel,
            text,
            frames,
            _room: room.map_err(|_| Jammed)?,
        };
        self.queue.send(outgoing).map_err(|_| Jammed)
    }
}

impl link::Courier for Courier {
    fn send(&self, to: &Arc<Owner>, text: String, frames: usize) -> Result<(), Jammed> {
        self.queue(Channel::To(to.clone()), text, frames)
    }
}

/// This process's links with the others, and the tasks that carry them.
pub struct PubSub {
    links: Links,
    courier: Arc<Courier>,
    client: redis::Client,
    redis: ConnectionManager,
    keys: Keys,
    me: Owner,
    metrics: Arc<Metrics>,
    tracker: TaskTracker,
    subscribed: AtomicBool,
    owes_reset: AtomicBool,
    hub: Hub,
    /// `--resume-window`: how long a remote member stays away.
    resume_window: Duration,
}

/// What a [`PubSub`] is built from.
pub struct Parts {
    pub client: redis::Client,
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub me: Owner,
    pub hub: Hub,
    pub metrics: Arc<Metrics>,
    /// Forwarders are tracked with the sessions, so a drain waits for their last messages.
    pub tracker: TaskTracker,
    pub queue_bytes: usize,
    pub max_members: usize,
    pub resume_window: Duration,
}

impl PubSub {
    /// Starts publishing and subscribing; the subscription ends with `shutdown`.
    pub fn start(parts: Parts, shutdown: CancellationToken) -> Arc<PubSub> {
        let (queue, queued) = unbounded_channel();
        let courier = Arc::new(Courier {
            queue,
            room: Arc::new(Semaphore::new(PUBLISH_QUEUE_BYTES)),
        });
        let links = Links::new(
            parts.hub.clone(),
            &parts.me,
            courier.clone(),
            parts.queue_bytes,
            parts.max_members,
        );
        let pubsub = Arc::new(PubSub {
            links,
            courier,
            client: parts.client,
            redis: parts.redis,
            keys: parts.keys,
            me: parts.me,
            metrics: parts.metrics,
            tracker: parts.tracker,
            subscribed: AtomicBool::new(false),
            owes_reset: AtomicBool::new(false),
            hub: parts.hub,
            resume_window: parts.resume_window,
        });
        tokio::spawn(pubsub.clone().publish(queued));
        tokio::spawn(pubsub.clone().subscribe(shutdown));
        pubsub
    }

    /// Joins the room `code` on `owner` for a client whose socket is here, or with `resume`
    /// resumes it there.
    pub async fn join(
        &self,
        code: JoinCode,
        owner: Owner,
        info: Option<String>,
        resume: Option<Resume>,
        outbox: Outbox,
        greet: Greet,
    ) -> Result<Guest, Refusal> {
        // A link made before this process's reset is out would be ended by it.
        if !self.subscribed.load(Ordering::Relaxed) || !self.settle() {
            return Err(ROOM_UNREACHABLE);
        }
        let owner = Arc::new(owner);
        let pending = (self.links).join(code, owner, info.as_deref(), resume, outbox, greet)?;
        timeout(JOIN_TIMEOUT, pending.accepted())
            .await
            .unwrap_or(Err(ROOM_UNREACHABLE))
    }

    /// Tells `owner` that its room `code` was taken over here, so that it lets the room go.
    pub fn taken(&self, owner: Owner, code: JoinCode) {
        self.links.taken(&Arc::new(owner), code);
    }

    /// The links, for the drain and the counts.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// Ends every link after a loss, and owes the others a reset.
    pub fn fault(&self, reason: &'static str, detail: &str) {
        // Owed before the links are cut, so no join can slip in between the two.
        self.owes_reset.store(true, Ordering::Relaxed);
        let severed = self.away_from(self.links.sever_all());
        self.settle();
        self.metrics.forwarding_error(reason);
        if severed > 0 {
            warn!(
                reason,
                detail, severed, "cluster links lost: forwarded sessions closed with 1013"
            );
        }
    }

    /// Times the window of each remote member a severance left away; returns how many links
    /// ended.
    fn away_from(&self, severed: Severed) -> usize {
        for (id, generation) in severed.away {
            self.expire_later(id, generation);
        }
        severed.links
    }

    /// Ends the away time of the remote member `id` once the resume window has passed, unless it
    /// resumed (here or through another instance).
    fn expire_later(&self, id: PeerId, generation: u32) {
        let (hub, window) = (self.hub.clone(), self.resume_window);
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            hub.expire(id, generation);
        });
    }

    /// Ends the links with processes whose lease has lapsed (found by the caller, which renews
    /// this process's own): their rooms' guests here hear PEER_GONE and `4410`.
    pub fn owners_gone(&self, dead: &[Owner]) {
        for owner in dead {
            let severed = self.away_from(self.links.sever(owner, Severance::OwnerGone));
            self.metrics.forwarding_error("owner_gone");
            info!(
                instance = owner.instance,
                severed, "cluster links: an instance's lease lapsed; its links are closed"
            );
        }
    }

    /// Every other process this one has links with.
    pub fn peers(&self) -> Vec<Arc<Owner>> {
        self.links.peers()
    }

    /// Queues the reset this process owes, if it owes one: at once after a loss, and again at
    /// each lease renewal while the way out is full. Returns whether none is owed any more; it
    /// goes out before anything queued later, so it never ends a link made after it.
    pub fn settle(&self) -> bool {
        if self.links.take_jammed() {
            // `fault` settles in turn, with the reset it now owes.
            self.fault(
                "queue_full",
                "a message to another instance did not fit the publish queue",
            );
            return !self.owes_reset.load(Ordering::Relaxed);
        }
        if self.owes_reset.swap(false, Ordering::Relaxed) {
            let owner = self.me.value();
            let reset = wire::encode(&Wire::Reset {
                owner: owner.as_str().into(),
            });
            if self.courier.queue(Channel::All, reset, 0).is_err() {
                self.owes_reset.store(true, Ordering::Relaxed);
                return false;
            }
        }
        true
    }

    /// Waits, at most [`REDIS_TIMEOUT`], until everything queued has been published: the last
    /// closes of a drain.
    pub async fn flush(&self) {
        let all = PUBLISH_QUEUE_BYTES as u32;
        let _ = timeout(REDIS_TIMEOUT, self.courier.room.acquire_many(all)).await;
    }

    /// Publishes what is queued, a pipeline at a time, for as long as the process runs.
    async fn publish(self: Arc<PubSub>, mut queued: UnboundedReceiver<Outgoing>) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        let links = self.keys.links();
        while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
            let mut pipe = redis::pipe();
            for message in &batch {
                let channel = match &message.channel {
                    Channel::To(owner) => self.keys.link(owner),
                    Channel::All => links.clone(),
                };
                pipe.cmd("PUBLISH").arg(channel).arg(&message.text);
            }
            let mut redis = self.redis.clone();
            match bounded(pipe.query_async::<Vec<i64>>(&mut redis)).await {
                Ok(heard) => self.published(&batch, &heard),
                Err(error) => self.fault("publish_failed", &error.to_string()),
            }
            batch.clear();
        }
    }

    /// Counts what was published; links with a process that heard nothing are lost.
    fn published(&self, batch: &[Outgoing], heard: &[i64]) {
        let mut frames = 0;
        let mut unheard: Vec<&Arc<Owner>> = Vec::new();
        for (message, &listeners) in batch.iter().zip(heard) {
            match &message.channel {
                Channel::To(owner) if listeners == 0 => {
                    if !unheard.contains(&owner) {
                        unheard.push(owner);
                    }
                }
                _ => frames += message.frames,
            }
        }
        self.metrics.forwarded("out", frames);
        for owner in unheard {
            let severed = self.away_from(self.links.sever(owner, Severance::Lost));
            self.metrics.forwarding_error("unheard");
            if severed > 0 {
                warn!(
                    instance = owner.instance,
                    severed,
                    "cluster links: an instance is not subscribed (restarted, or lost its \
                     subscription); its links are closed with 1013"
                );
            }
        }
    }

    /// Holds the subscription, subscribing again whenever it is lost, until `shutdown`.
    async fn subscribe(self: Arc<PubSub>, shutdown: CancellationToken) {
        let channels = [self.keys.link(&self.me), self.keys.links()];
        loop {
            let subscribed = bounded(async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channels).await?;
                Ok(pubsub)
            });
            match subscribed.await {
                Ok(pubsub) => {
                    self.subscribed.store(true, Ordering::Relaxed);
                    info!("cluster links: subscribed");
                    let lost = self.listen(pubsub, &shutdown).await;
                    self.subscribed.store(false, Ordering::Relaxed);
                    match lost {
                        Some(detail) => self.fault("subscription_lost", &detail),
                        None => return,
                    }
                }
                Err(error) => debug!(%error, "cluster links: subscribing failed"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(RESUBSCRIBE_DELAY) => {}
            }
        }
    }

    /// Acts on each message until the subscription is lost (why, returned) or `shutdown`.
    async fn listen(
        self: &Arc<PubSub>,
        pubsub: redis::aio::PubSub,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                message = stream.next() => match message {
                    Some(message) => self.dispatch(message.get_payload_bytes()),
                    None => return Some("the connection closed".into()),
                },
                _ = ping.tick() => {
                    if let Err(error) = bounded(sink.ping::<redis::Value>()).await {
                        return Some(error.to_string());
                    }
                }
            }
        }
    }

    fn dispatch(self: &Arc<PubSub>, payload: &[u8]) {
        let received = std::str::from_utf8(payload)
            .map_err(|error| error.to_string())
            .and_then(|text| self.links.receive(text).map_err(|error| error.to_string()));
        match received {
            Ok(Received::Delivered { frames }) => self.metrics.forwarded("in", frames),
            Ok(Received::Forward(forwarder)) => {
                self.tracker.spawn(self.clone().forward(forwarder));
            }
            Ok(Received::Away(id, generation)) => self.expire_later(id, generation),
            Err(error) => {
                self.metrics.forwarding_error("unreadable");
                debug!(%error, "cluster links: message dropped");
            }
        }
    }

    /// Drains a remote member's queue into `deliver` messages until the hub closes it or the
    /// member is dropped from the links.
    async fn forward(self: Arc<PubSub>, forwarder: Forwarder) {
        let Forwarder {
            ticket,
            inbox,
            mut dropped,
        } = forwarder;
        loop {
            tokio::select! {
                batch = inbox.next_batch() => match batch {
                    Ok(frames) => {
                        if self.links.forward(ticket, &frames).is_err() {
                            return self.fault("queue_full", "the publish queue is full");
                        }
                    }
                    Err(closing) => return self.links.member_closed(ticket, closing),
                },
                _ = &mut dropped => return,
            }
        }
    }
}
