//! A token bucket: a rate and a burst, refilled from the time the caller passes
//! (the switch has no clock of its own).
//!
//! Tokens are kept in units of 1/10^9 token so that refilling `elapsed_ns * rate`
//! is exact integer arithmetic: no rounding drift however often it is called.

const NS_PER_S: u128 = 1_000_000_000;

/// `rate` tokens per second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    /// Tokens * 10^9.
    level: u128,
    last_ns: u64,
}

impl TokenBucket {
    /// A full bucket at time `now_ns`.
    pub fn new(rate_per_s: u64, burst: u64, now_ns: u64) -> Self {
        Self {
            rate: rate_per_s,
            burst,
            level: u128::from(burst) * NS_PER_S,
            last_ns: now_ns,
        }
    }

    fn refill(&mut self, now_ns: u64) {
        // A caller whose clock went backwards gets no tokens, never a panic.
        let elapsed = now_ns.saturating_sub(self.last_ns);
        self.last_ns = self.last_ns.max(now_ns);
        let cap = u128::from(self.burst) * NS_PER_S;
        // (2^64 - 1)^2 fits a u128, the sum with the level may not: saturate.
        let added = u128::from(elapsed) * u128::from(self.rate);
        self.level = self.level.saturating_add(added).min(cap);
    }

    /// Whether `cost` tokens are there at `now_ns` (without taking them).
    pub fn has(&mut self, cost: u64, now_ns: u64) -> bool {
        self.refill(now_ns);
        self.level >= u128::from(cost) * NS_PER_S
    }

    /// Takes `cost` tokens; call after [`Self::has`] said yes at the same time.
    pub fn take(&mut self, cost: u64) {
        self.level = self.level.saturating_sub(u128::from(cost) * NS_PER_S);
    }

    /// Whole tokens available at the last refill.
    pub fn tokens(&self) -> u64 {
        (self.level / NS_PER_S) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(1000, 3000, 0);
        assert!(b.has(3000, 0));
        b.take(3000);
        assert!(!b.has(1, 0));
        // 1 ms at 1000/s is one token.
        assert!(!b.has(2, 1_000_000));
        assert!(b.has(1, 1_000_000));
        // Refill stops at the burst.
        assert!(!b.has(3001, 100_000_000_000));
        assert_eq!(b.tokens(), 3000);
    }

    #[test]
    fn sub_token_refills_add_up_exactly() {
        let mut b = TokenBucket::new(3, 10, 0);
        b.take(10);
        // 3 tokens/s in 1 ns steps: a third of a token per 111,111,111 ns.
        let mut now = 0;
        for _ in 0..1000 {
            now += 1_000_000;
            b.has(0, now);
        }
        assert_eq!(b.tokens(), 3, "one second gives exactly three tokens");
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut b = TokenBucket::new(1, 1, 1_000_000_000);
        b.take(1);
        assert!(!b.has(1, 0), "earlier time: no refill");
        assert!(!b.has(1, 1_500_000_000), "the clock is not moved back");
        assert!(b.has(1, 2_000_000_000));
        let mut c = TokenBucket::new(u64::MAX, u64::MAX, 0);
        c.take(u64::MAX);
        assert!(c.has(u64::MAX, u64::MAX), "no overflow at the extremes");
    }
}
