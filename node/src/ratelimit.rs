//! Per-connection rate limiting: a token bucket for messages, and a second one for strikes.
//!
//! A message over the rate is dropped with a `rate_limited` error and costs a strike; strikes
//! refill slowly, so an occasional burst is forgiven while a sustained flood runs out of strikes
//! and the connection is closed with 1008.

use tokio::time::Instant;

/// A classic token bucket.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full bucket of `capacity` tokens refilling at `per_sec`.
    pub fn new(capacity: f64, per_sec: f64, now: Instant) -> Self {
        TokenBucket {
            capacity: capacity.max(1.0),
            per_sec: per_sec.max(0.0),
            tokens: capacity.max(1.0),
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allow,
    /// Drop it with a `rate_limited` error (`notify`: first drop since the last allowed message,
    /// so the client is told once per run rather than once per dropped message).
    Limited {
        /// Send the error event.
        notify: bool,
    },
    /// Close the connection with 1008.
    Flood,
}

/// Window over which `flood_strikes` refill.
const STRIKE_WINDOW_SECS: f64 = 10.0;

/// The limiter of one connection.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    messages: TokenBucket,
    strikes: TokenBucket,
    limited: bool,
}

impl RateLimiter {
    /// `per_sec` messages on average, bursts of `burst`, `flood_strikes` drops per 10 s tolerated.
    pub fn new(per_sec: f64, burst: f64, flood_strikes: f64, now: Instant) -> Self {
        RateLimiter {
            messages: TokenBucket::new(burst, per_sec, now),
            strikes: TokenBucket::new(flood_strikes, flood_strikes / STRIKE_WINDOW_SECS, now),
            limited: false,
        }
    }

    /// Judges one incoming message.
    pub fn check(&mut self, now: Instant) -> Verdict {
        if self.messages.try_take(now) {
            self.limited = false;
            return Verdict::Allow;
        }
        if !self.strikes.try_take(now) {
            return Verdict::Flood;
        }
        let notify = !self.limited;
        self.limited = true;
        Verdict::Limited { notify }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate_then_flood() {
        let start = Instant::now();
        let mut rl = RateLimiter::new(10.0, 5.0, 3.0, start);
        for _ in 0..5 {
            assert_eq!(rl.check(Instant::now()), Verdict::Allow);
        }
        assert_eq!(rl.check(Instant::now()), Verdict::Limited { notify: true });
        assert_eq!(rl.check(Instant::now()), Verdict::Limited { notify: false });
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(
            rl.check(Instant::now()),
            Verdict::Allow,
            "refilled one token"
        );
        assert_eq!(rl.check(Instant::now()), Verdict::Limited { notify: true });
        assert_eq!(
            rl.check(Instant::now()),
            Verdict::Flood,
            "three strikes used"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sending_at_the_rate_is_never_limited() {
        let mut rl = RateLimiter::new(100.0, 10.0, 5.0, Instant::now());
        for _ in 0..10_000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            assert_eq!(rl.check(Instant::now()), Verdict::Allow);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn occasional_bursts_are_forgiven() {
        let mut rl = RateLimiter::new(1.0, 1.0, 2.0, Instant::now());
        for _ in 0..20 {
            assert_eq!(rl.check(Instant::now()), Verdict::Allow);
            assert!(matches!(rl.check(Instant::now()), Verdict::Limited { .. }));
            tokio::time::advance(Duration::from_secs(6)).await;
        }
    }
}
