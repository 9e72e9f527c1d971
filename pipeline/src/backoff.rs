//! Jittered exponential backoff, shared by every retry loop so they all behave alike.

use std::time::Duration;

/// Full-jitter exponential backoff: a random delay in `[base*2^attempt / 2, base*2^attempt]`,
/// capped at `max`. Half-jitter keeps a floor so a burst of retries still spreads out
/// but never retries immediately.
pub fn delay(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(20));
    let capped = exp.min(max);
    let half = capped / 2;
    let jitter_ms = half.as_millis() as u64;
    half + Duration::from_millis(if jitter_ms == 0 {
        0
    } else {
        fastrand::u64(0..=jitter_ms)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        for attempt in 0..30 {
            let d = delay(attempt, base, max);
            let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(max);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            assert!(
                d >= ceiling / 2,
                "attempt {attempt}: {d:?} < half of {ceiling:?}"
            );
        }
    }
}
