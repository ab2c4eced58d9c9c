//! Exponential backoff with jitter: the one retry schedule of the crate
//! (lock retries, store reconnects).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Doubling delays from `min` to `max`, each jittered to 50–100 % so
/// replicas retrying together do not collide again.
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Start at `min`; never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt (jittered), doubling the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(d)
    }

    /// The longest delay, jittered (for failures that will not fix
    /// themselves quickly).
    pub fn max_delay(&self) -> Duration {
        jitter(self.max)
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// 50–100 % of `d`.
fn jitter(d: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or_else(|_| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |t| t.subsec_nanos())
    });
    d / 2 + d.mul_f64(f64::from(r % 1000) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let delays: Vec<Duration> = (0..4).map(|_| b.next_delay()).collect();
        for (d, nominal) in delays.iter().zip([10, 20, 35, 35]) {
            let nominal = Duration::from_millis(nominal);
            assert!(*d >= nominal / 2 && *d <= nominal, "{d:?} vs {nominal:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
        assert!(b.max_delay() <= Duration::from_millis(35));
    }
}
