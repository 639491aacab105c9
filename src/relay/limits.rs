//! The bounds a peer can run into: connection caps in all and per address, failed attempts per
//! address, and each peer's message rate.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Failed join and registration attempts are counted per address over windows this long.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The connection bounds: `--max-connections` in all, `--max-connections-per-ip`, and
/// `--max-failed-attempts-per-minute` per address (0 turns a per-address bound off).
#[derive(Debug)]
pub struct ConnectionSlots {
    max: usize,
    live: AtomicUsize,
    max_per_ip: u32,
    max_failures: u32,
    by_ip: Mutex<AddressBook>,
}

/// Per-address counts. It holds an entry only for an address with a live session or a failure
/// in its current window, so it stays as small as the traffic that is actually there.
#[derive(Debug, Default)]
struct AddressBook {
    entries: HashMap<IpKey, AddressEntry>,
    /// Sweep expired entries once the book has grown past this size…
    sweep_at: usize,
    /// …or a window after the last sweep.
    swept_at: Option<Instant>,
}

#[derive(Debug)]
struct AddressEntry {
    live: u32,
    failures: u32,
    window_started: Instant,
}

/// A client address as the limits see it: IPv4 whole, IPv6 by its /64, since one host is
/// usually handed a whole /64 and could otherwise pick a fresh address per attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpKey(IpAddr);

impl From<IpAddr> for IpKey {
    fn from(ip: IpAddr) -> IpKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !(u128::from(u64::MAX));
                IpKey(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => IpKey(v4),
        }
    }
}

/// What the per-address bounds say about a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVerdict {
    /// Within bounds.
    Allowed,
    /// The address already holds `--max-connections-per-ip` sessions.
    TooManyConnections,
    /// The address failed `--max-failed-attempts-per-minute` times in this window.
    TooManyFailures,
}

/// One taken slot; dropping it frees the slot and the address's share.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<ConnectionSlots>,
    /// Set when the session counts against its address's bound.
    ip: Option<IpKey>,
}

impl ConnectionSlots {
    /// Room for `max` sessions at once, `max_per_ip` per address, and `max_failures` failed
    /// attempts per address per minute.
    pub fn new(max: usize, max_per_ip: u32, max_failures: u32) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots {
            max,
            live: AtomicUsize::new(0),
            max_per_ip,
            max_failures,
            by_ip: Mutex::default(),
        })
    }

    fn book(&self) -> MutexGuard<'_, AddressBook> {
        // Every update leaves the counts consistent before anything can panic.
        self.by_ip
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes a slot for a session from `ip`, or `None` when all slots are in use. A refused
    /// address still gets a slot, so that its refusal (a WebSocket ERROR and close) is bounded
    /// too, but not a share of its address's bound.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Option<(Slot, IpVerdict)> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < self.max).then_some(live + 1)
            })
            .ok()?;
        let key = IpKey::from(ip);
        let mut book = self.book();
        book.sweep(now);
        let entry = book.entries.entry(key).or_insert(AddressEntry {
            live: 0,
            failures: 0,
            window_started: now,
        });
        entry.expire_window(now);
        let verdict = if self.max_failures > 0 && entry.failures >= self.max_failures {
            IpVerdict::TooManyFailures
        } else if self.max_per_ip > 0 && entry.live >= self.max_per_ip {
            IpVerdict::TooManyConnections
        } else {
            entry.live += 1;
            IpVerdict::Allowed
        };
        let registered = verdict == IpVerdict::Allowed;
        if !registered && entry.is_idle() {
            book.entries.remove(&key);
        }
        let slot = Slot {
            slots: self.clone(),
            ip: registered.then_some(key),
        };
        Some((slot, verdict))
    }

    /// Sessions live now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Addresses the book holds entries for (for tests and metrics).
    pub fn tracked_addresses(&self) -> usize {
        self.book().entries.len()
    }
}

impl AddressEntry {
    fn expire_window(&mut self, now: Instant) {
        if now.saturating_duration_since(self.window_started) >= FAILURE_WINDOW {
            self.failures = 0;
            self.window_started = now;
        }
    }

    fn is_idle(&self) -> bool {
        self.live == 0 && self.failures == 0
    }
}

impl AddressBook {
    /// Drops entries with no session and an expired window, once per doubling of size or per
    /// window, so the cost stays amortised and stale entries do not outlive a window by much.
    fn sweep(&mut self, now: Instant) {
        let window_passed = self
            .swept_at
            .is_none_or(|at| now.saturating_duration_since(at) >= FAILURE_WINDOW);
        if self.entries.len() < self.sweep_at && !window_passed {
            return;
        }
        self.swept_at = Some(now);
        self.entries.retain(|_, entry| {
            entry.expire_window(now);
            !entry.is_idle()
        });
        self.sweep_at = (2 * self.entries.len()).max(1024);
    }
}

impl Slot {
    /// Counts a failed join or registration (unknown code, wrong passphrase) against the
    /// session's address.
    pub fn record_failure(&self, now: Instant) {
        let Some(key) = self.ip else { return };
        let mut book = self.slots.book();
        if let Some(entry) = book.entries.get_mut(&key) {
            entry.expire_window(now);
            entry.failures = entry.failures.saturating_add(1);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.live.fetch_sub(1, Ordering::AcqRel);
        let Some(key) = self.ip else { return };
        let mut book = self.slots.book();
        if let Some(entry) = book.entries.get_mut(&key) {
            entry.live = entry.live.saturating_sub(1);
            entry.expire_window(Instant::now());
            if entry.is_idle() {
                book.entries.remove(&key);
            }
        }
    }
}

/// What the rate limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: relay it.
    Allowed,
    /// Over the rate: drop it and tell the peer.
    Dropped,
    /// Over the rate, and so are the notices of drops: drop it without a word. A peer that
    /// ignores its `RATE_LIMITED` errors must not make the relay write one per frame it sends.
    DroppedQuietly,
    /// Over the rate without pause for the whole flood window: disconnect.
    Flooding,
}

/// A token bucket (`rate` per second, burst twice that, starting full) that also notices floods.
///
/// A flood is a run of dropped messages with no quiet second between them; one lasting
/// `flood_window` means the peer ignores its `RATE_LIMITED` errors. The notices of drops have a
/// bucket of their own, of the same size, so what the relay writes back is bounded by the rate
/// too, however fast the peer sends.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    notices: f64,
    refilled_at: Instant,
    flood_window: Duration,
    /// When the current run of drops began, and the last drop in it.
    flood: Option<(Instant, Instant)>,
}

/// A pause in drops this long ends a flood.
const FLOOD_PAUSE: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// A limiter allowing `per_second` messages per second; `0` allows everything.
    pub fn new(per_second: u32, flood_window: Duration, now: Instant) -> RateLimiter {
        let rate = f64::from(per_second);
        RateLimiter {
            rate,
            burst: 2.0 * rate,
            tokens: 2.0 * rate,
            notices: 2.0 * rate,
            refilled_at: now,
            flood_window,
            flood: None,
        }
    }

    /// Charges one message at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.rate == 0.0 {
            return Verdict::Allowed;
        }
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.notices = (self.notices + elapsed * self.rate).min(self.burst);
        self.refilled_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        let began = match self.flood {
            Some((began, last)) if now.saturating_duration_since(last) < FLOOD_PAUSE => began,
            _ => now,
        };
        self.flood = Some((began, now));
        if now.saturating_duration_since(began) >= self.flood_window {
            Verdict::Flooding
        } else if self.notices >= 1.0 {
            self.notices -= 1.0;
            Verdict::Dropped
        } else {
            Verdict::DroppedQuietly
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(10);

    #[test]
    fn bucket_starts_full_at_twice_the_rate_then_refills() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(5, WINDOW, start);
        for _ in 0..10 {
            assert_eq!(limiter.check(start), Verdict::Allowed);
        }
        assert_eq!(limiter.check(start), Verdict::Dropped);
        let later = start + Duration::from_millis(200);
        assert_eq!(limiter.check(later), Verdict::Allowed);
        assert_eq!(limiter.check(later), Verdict::Dropped);
    }

    #[test]
    fn drops_are_told_only_at_the_rate_itself() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(5, WINDOW, start);
        let verdicts: Vec<_> = (0..300).map(|_| limiter.check(start)).collect();
        let count = |wanted| verdicts.iter().filter(|v| **v == wanted).count();
        assert_eq!(count(Verdict::Allowed), 10);
        assert_eq!(count(Verdict::Dropped), 10, "a burst's worth of notices");
        assert_eq!(count(Verdict::DroppedQuietly), 280);
        let later = start + Duration::from_millis(200);
        assert_eq!(limiter.check(later), Verdict::Allowed);
        assert_eq!(limiter.check(later), Verdict::Dropped, "notices refill too");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(0, WINDOW, start);
        assert!((0..100_000).all(|_| limiter.check(start) == Verdict::Allowed));
    }

    #[test]
    fn a_sustained_flood_is_noticed_and_a_pause_forgives_it() {
        let start = Instant::now();
        let mut limiter = RateLimiter::new(1, WINDOW, start);
        let mut now = start;
        let mut verdicts = Vec::new();
        while now < start + Duration::from_secs(11) {
            verdicts.push(limiter.check(now));
            now += Duration::from_millis(100);
        }
        assert_eq!(verdicts.last(), Some(&Verdict::Flooding));
        assert!(
            verdicts.contains(&Verdict::Allowed),
            "the bucket keeps refilling"
        );

        let mut limiter = RateLimiter::new(1, WINDOW, start);
        let mut now = start;
        for _ in 0..6 {
            for _ in 0..5 {
                assert_ne!(limiter.check(now), Verdict::Flooding);
            }
            now += Duration::from_secs(2);
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("valid address")
    }

    #[test]
    fn slots_are_bounded_and_returned() {
        let slots = ConnectionSlots::new(2, 0, 0);
        let now = Instant::now();
        let (a, _) = slots.admit(ip("10.0.0.1"), now).expect("free");
        let _b = slots.admit(ip("10.0.0.2"), now).expect("free");
        assert!(slots.admit(ip("10.0.0.3"), now).is_none());
        drop(a);
        assert_eq!(slots.live(), 1);
        assert!(slots.admit(ip("10.0.0.3"), now).is_some());
    }

    #[test]
    fn per_address_connections_are_bounded() {
        let slots = ConnectionSlots::new(100, 2, 0);
        let now = Instant::now();
        let first = slots.admit(ip("10.0.0.1"), now).expect("room");
        let _second = slots.admit(ip("10.0.0.1"), now).expect("room");
        let (refused, verdict) = slots.admit(ip("10.0.0.1"), now).expect("room");
        assert_eq!(verdict, IpVerdict::TooManyConnections);
        assert_eq!(
            slots.admit(ip("10.0.0.2"), now).map(|s| s.1),
            Some(IpVerdict::Allowed)
        );
        drop(refused);
        drop(first);
        assert_eq!(
            slots.admit(ip("10.0.0.1"), now).map(|s| s.1),
            Some(IpVerdict::Allowed)
        );
    }

    #[test]
    fn failures_lock_an_address_out_for_the_rest_of_the_minute() {
        let slots = ConnectionSlots::new(100, 0, 3);
        let start = Instant::now();
        for _ in 0..3 {
            let (slot, verdict) = slots.admit(ip("10.0.0.1"), start).expect("room");
            assert_eq!(verdict, IpVerdict::Allowed);
            slot.record_failure(start);
        }
        let refused = slots.admit(ip("10.0.0.1"), start).map(|s| s.1);
        assert_eq!(refused, Some(IpVerdict::TooManyFailures));
        assert_eq!(
            slots.admit(ip("10.0.0.2"), start).map(|s| s.1),
            Some(IpVerdict::Allowed)
        );
        let later = start + FAILURE_WINDOW;
        assert_eq!(
            slots.admit(ip("10.0.0.1"), later).map(|s| s.1),
            Some(IpVerdict::Allowed)
        );
    }

    #[test]
    fn ipv6_is_counted_by_its_64_prefix_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            IpKey::from(ip("2001:db8::1")),
            IpKey::from(ip("2001:db8::ffff:2"))
        );
        assert_ne!(
            IpKey::from(ip("2001:db8::1")),
            IpKey::from(ip("2001:db8:0:1::1"))
        );
        assert_eq!(
            IpKey::from(ip("::ffff:10.0.0.1")),
            IpKey::from(ip("10.0.0.1"))
        );
    }

    #[test]
    fn the_book_forgets_addresses_without_sessions_or_failures() {
        let slots = ConnectionSlots::new(10_000, 0, 5);
        let now = Instant::now();
        for n in 0..3000u32 {
            let (slot, _) = slots
                .admit(IpAddr::from(n.to_be_bytes()), now)
                .expect("room");
            drop(slot);
        }
        assert_eq!(slots.tracked_addresses(), 0);
        for n in 0..3000u32 {
            let (slot, _) = slots
                .admit(IpAddr::from(n.to_be_bytes()), now)
                .expect("room");
            slot.record_failure(now);
        }
        assert_eq!(
            slots.tracked_addresses(),
            3000,
            "failures are remembered for the window"
        );
        let later = now + FAILURE_WINDOW;
        let _ = slots.admit(ip("10.9.9.9"), later);
        assert!(
            slots.tracked_addresses() < 3000,
            "expired windows are swept"
        );
    }
}
