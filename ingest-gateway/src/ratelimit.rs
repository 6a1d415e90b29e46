//! Per-user request rate limit (GCRA, governor): a sustained rate plus a burst. A refused
//! request gets 429 RATE_LIMITED with Retry-After = when the next request would pass.
//!
//! State is per process: with several gateway replicas the effective limit is per
//! replica (a load balancer with user affinity keeps it close to the configured one).

use std::num::NonZeroU32;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use uuid::Uuid;

use crate::error::GatewayError;

pub struct UserRateLimiter {
    limiter: DefaultKeyedRateLimiter<Uuid>,
    clock: DefaultClock,
}

impl std::fmt::Debug for UserRateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRateLimiter")
            .field("users", &self.limiter.len())
            .finish()
    }
}

impl UserRateLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(per_second);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            ),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the user's allowance.
    pub fn check(&self, user_id: Uuid) -> Result<(), GatewayError> {
        self.limiter
            .check_key(&user_id)
            .map_err(|not_until| GatewayError::RateLimited {
                retry_after: not_until.wait_time_from(self.clock.now()),
            })
    }

    /// Forgets users whose allowance is full again, so memory follows active users.
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let l = UserRateLimiter::new(1, 3);
        let u = Uuid::new_v4();
        for _ in 0..3 {
            l.check(u).unwrap();
        }
        match l.check(u) {
            Err(GatewayError::RateLimited { retry_after }) => assert!(retry_after.as_millis() > 0),
            other => panic!("expected 429, got {other:?}"),
        }
        // Another user has their own allowance.
        l.check(Uuid::new_v4()).unwrap();
    }
}
