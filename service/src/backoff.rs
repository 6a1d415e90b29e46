//! The delay between retries of a loop that failed (relay passes, sink sessions, the
//! processor's recovery): exponential, so a dependency that is down is not hammered, and
//! capped, so the service notices soon after it is back.

use std::time::Duration;

/// Exponential backoff with a cap: `first`, `2 * first`, ... up to `max`, then `max`
/// until `reset`. No jitter: each service runs one such loop per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the next one doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// The delay `next_delay` would return, without moving on.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let delays: Vec<_> = (0..8).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        assert_eq!(b.current(), Duration::from_secs(10));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(200));
    }

    #[test]
    fn a_huge_cap_does_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::MAX);
        for _ in 0..200 {
            b.next_delay();
        }
        assert_eq!(b.current(), Duration::MAX);
    }
}
