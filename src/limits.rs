//! The bounds a peer can run into: the relay's connection cap and each peer's message rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Counts live WebSocket sessions against `--max-connections`.
#[derive(Debug)]
pub struct ConnectionSlots {
    max: usize,
    live: AtomicUsize,
}

/// One taken slot; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot(Arc<ConnectionSlots>);

impl ConnectionSlots {
    /// Room for `max` sessions at once.
    pub fn new(max: usize) -> Arc<ConnectionSlots> {
        Arc::new(ConnectionSlots {
            max,
            live: AtomicUsize::new(0),
        })
    }

    /// Takes a slot, or `None` when all are in use.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |live| {
                (live < self.max).then_some(live + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Sessions live now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the rate limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: relay it.
    Allowed,
    /// Over the rate: drop it and tell the peer.
    Dropped,
    /// Over the rate without pause for the whole flood window: disconnect.
    Flooding,
}

/// A token bucket (`rate` per second, burst twice that, starting full) that also notices floods.
///
/// A flood is a run of dropped messages with no quiet second between them; one lasting
/// `flood_window` means the peer ignores its `RATE_LIMITED` errors.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
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
        } else {
            Verdict::Dropped
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

    #[test]
    fn slots_are_bounded_and_returned() {
        let slots = ConnectionSlots::new(2);
        let a = slots.try_take().expect("free");
        let _b = slots.try_take().expect("free");
        assert!(slots.try_take().is_none());
        drop(a);
        assert_eq!(slots.live(), 1);
        assert!(slots.try_take().is_some());
    }
}
