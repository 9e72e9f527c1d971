//! Retrying with jittered exponential backoff, shared by every retry loop (the Chorus
//! client, GCS chunks, S3 aborts, a fetch's files, the stage runner's redeliveries) so
//! they all behave alike: [`delay`] for the wait, [`RetryPolicy::run`] for the loop.

use std::future::Future;
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

/// How a retried operation tries and waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included (at least one is made).
    pub tries: u32,
    /// Ceiling of the first wait; it doubles per retry.
    pub base: Duration,
    /// Longest wait between two tries (unless the server asks for longer).
    pub max: Duration,
}

/// What one try decided.
#[derive(Debug)]
pub enum Outcome<T, E> {
    Done(T),
    /// Worth another try, after at least `at_least` when given (a server's `Retry-After`).
    Retry {
        error: E,
        at_least: Option<Duration>,
    },
    /// Trying again cannot help.
    Fail(E),
}

/// Why a retried operation ended without a result.
#[derive(Debug, PartialEq, Eq)]
pub enum GaveUp<E> {
    /// A try failed in a way retrying cannot fix.
    Failed(E),
    /// Every try was used; `last` is the last one's error.
    Exhausted { tries: u32, last: E },
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0 for the first retry).
    pub fn wait(&self, retry: u32, at_least: Option<Duration>) -> Duration {
        let backoff = delay(retry, self.base, self.max);
        at_least.map_or(backoff, |floor| backoff.max(floor))
    }

    /// Runs `attempt(n)` (n = 0 for the first try) until it is done, fails for good, or
    /// the tries are used up, waiting between tries. `before_retry(n, &error, wait)` is
    /// called before retry `n` (1 for the first retry), for logs and counters.
    pub async fn run<T, E, Fut>(
        &self,
        mut attempt: impl FnMut(u32) -> Fut,
        mut before_retry: impl FnMut(u32, &E, Duration),
    ) -> Result<T, GaveUp<E>>
    where
        Fut: Future<Output = Outcome<T, E>>,
    {
        let tries = self.tries.max(1);
        let mut made = 0;
        loop {
            match attempt(made).await {
                Outcome::Done(value) => return Ok(value),
                Outcome::Fail(error) => return Err(GaveUp::Failed(error)),
                Outcome::Retry { error, at_least } => {
                    made += 1;
                    if made >= tries {
                        return Err(GaveUp::Exhausted {
                            tries: made,
                            last: error,
                        });
                    }
                    let wait = self.wait(made - 1, at_least);
                    before_retry(made, &error, wait);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
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

    fn quick(tries: u32) -> RetryPolicy {
        RetryPolicy {
            tries,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        }
    }

    #[tokio::test]
    async fn retries_until_done_and_reports_each_retry() {
        let mut seen = Vec::new();
        let result: Result<u32, GaveUp<&str>> = quick(5)
            .run(
                |n| async move {
                    if n < 2 {
                        Outcome::Retry {
                            error: "busy",
                            at_least: None,
                        }
                    } else {
                        Outcome::Done(n)
                    }
                },
                |n, e, _| seen.push((n, *e)),
            )
            .await;
        assert_eq!(result, Ok(2));
        assert_eq!(seen, vec![(1, "busy"), (2, "busy")]);
    }

    #[tokio::test]
    async fn stops_at_a_final_error_and_after_the_last_try() {
        let failed: Result<(), GaveUp<&str>> = quick(5)
            .run(|_| async { Outcome::Fail("refused") }, |_, _, _| {})
            .await;
        assert_eq!(failed, Err(GaveUp::Failed("refused")));
        let mut made = 0;
        let exhausted: Result<(), GaveUp<u32>> = quick(3)
            .run(
                |n| {
                    made += 1;
                    async move {
                        Outcome::Retry {
                            error: n,
                            at_least: None,
                        }
                    }
                },
                |_, _, _| {},
            )
            .await;
        assert_eq!(exhausted, Err(GaveUp::Exhausted { tries: 3, last: 2 }));
        assert_eq!(made, 3);
    }

    #[test]
    fn a_server_wait_is_a_floor() {
        let p = quick(3);
        assert_eq!(
            p.wait(0, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert!(p.wait(0, None) <= Duration::from_millis(1));
    }
}
