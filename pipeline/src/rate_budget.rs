//! A request budget for a rate-limited API account, shared by every process that uses
//! the account: a token bucket (GCRA form) whose state lives in a JetStream key-value
//! bucket and is changed only by compare-and-set, plus the adaptive part (the rate halves
//! on a 429, honours `Retry-After`, and recovers slowly).
//!
//! Why a shared key-value entry rather than per-process shares of the rate: a job's
//! workers may be separate processes on several machines, started and stopped at any
//! time, and several jobs (a schedule's run, a manual export) may use the same Chorus
//! account at once. Splitting the rate would need an up-to-date count of every process
//! of every job of the account; one CAS-updated entry per account needs nothing but the
//! NATS server every worker already talks to, and a 429 seen by one worker slows all of
//! them at once. The cost is one read and one compare-and-set per reservation (well under
//! a millisecond on a local server, small next to a Chorus request); at high rates one
//! reservation takes the slots of the next [`PREPAY_WINDOW`] for this process, so the
//! cost is shared by up to [`MAX_PREPAID`] requests. The bucket is kept
//! in memory (the state is worth seconds) and entries expire after a day.
//!
//! The entry holds a reservation time, not a count: each request reserves the next free
//! slot and sleeps until it, so waiting workers never poll. Times are wall-clock
//! milliseconds so that processes on several machines agree (to within their clock
//! skew, which only shifts when a slot starts).
//!
//! If the bucket cannot be reached the budget keeps working in this process alone (and
//! says so once in the log): a broken status entry must never stop an export.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};

use crate::JobId;

/// The key-value bucket holding every account's budget and each job's account key.
pub const BUDGET_BUCKET: &str = "PORTSHIFT_RATE_BUDGET";

/// The slowest the adaptive rate goes (one request per 20 s), so a job never stalls.
pub const MIN_RATE: f64 = 0.05;

/// After a cut, the rate grows back by this fraction of the configured rate per second
/// (from nothing to full in two minutes, from half to full in one).
pub const RECOVERY_PER_SEC: f64 = 1.0 / 120.0;

/// 429s within this long of a cut do not cut again: they answer requests sent before
/// the cut (a job has several requests in flight), so they say nothing new.
pub const CUT_COOLDOWN: Duration = Duration::from_secs(2);

/// Compare-and-set attempts before an update falls back to this process's own state.
const MAX_CAS_ATTEMPTS: u32 = 50;

/// At high rates a process reserves the slots of this long in one compare-and-set and
/// uses them itself, so the shared entry costs two JetStream requests per batch rather
/// than per API request (at 2 per second, the default, a batch is one slot).
pub const PREPAY_WINDOW: Duration = Duration::from_millis(100);

/// The most slots reserved at once.
pub const MAX_PREPAID: usize = 16;

/// A reserved slot not used within this long after its start is dropped: using it later
/// would add to the requests of that later moment (so a second holds at most
/// burst + 1.1 × rate requests when slots are reserved ahead).
const PREPAID_SHELF_LIFE_MS: i64 = PREPAY_WINDOW.as_millis() as i64;

/// A reservation that waits longer than this counts as "waiting for the rate limit" in
/// progress displays (shorter waits are the normal spacing of requests).
const SHOWN_WAIT: Duration = Duration::from_millis(200);

/// The configured budget: the most requests per second and the burst allowed at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Requests per second (the adaptive rate never exceeds it).
    pub rate: f64,
    /// Requests that may go at once after a quiet spell (at least 1).
    pub burst: u32,
}

impl BudgetConfig {
    /// 2 requests per second: below the ~3 per second that peers of Chorus publish, as
    /// Chorus publishes no number of its own.
    pub const DEFAULT_RATE: f64 = 2.0;
    /// A burst of 4 requests.
    pub const DEFAULT_BURST: u32 = 4;

    /// A checked budget: a rate above zero (at most 10,000) and a burst of at least one.
    pub fn new(rate: f64, burst: u32) -> Result<Self, BudgetError> {
        if !rate.is_finite() || !(MIN_RATE..=10_000.0).contains(&rate) {
            return Err(BudgetError::Rate(rate));
        }
        if burst == 0 || burst > 10_000 {
            return Err(BudgetError::Burst(burst));
        }
        Ok(BudgetConfig { rate, burst })
    }

    fn interval_ms(rate: f64) -> f64 {
        1000.0 / rate
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            rate: Self::DEFAULT_RATE,
            burst: Self::DEFAULT_BURST,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error(
        "a request rate of {0} per second cannot be used: give a number from {MIN_RATE} to 10000"
    )]
    Rate(f64),
    #[error("a burst of {0} requests cannot be used: give a whole number from 1 to 10000")]
    Burst(u32),
}

/// One account's shared state (JSON in [`BUDGET_BUCKET`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetState {
    /// The theoretical arrival time of the next request (ms since the epoch): the end
    /// of the last reserved slot.
    pub tat_ms: f64,
    /// The rate right after the last cut (requests per second); 0 = never cut.
    pub cut_rate: f64,
    /// When the last cut happened (ms since the epoch).
    pub cut_ms: i64,
    /// No request starts before this (a `Retry-After`), ms since the epoch.
    pub hold_until_ms: i64,
    /// 429s seen in total.
    pub throttled: u64,
    /// The configured rate and burst of the last writer, for status displays.
    pub config_rate: f64,
    pub config_burst: u32,
}

impl BudgetState {
    /// The rate in force at `now_ms`: the configured one, or the cut rate growing back.
    pub fn rate(&self, config: &BudgetConfig, now_ms: i64) -> f64 {
        if self.cut_rate <= 0.0 {
            return config.rate;
        }
        let since = (now_ms - self.cut_ms).max(0) as f64 / 1000.0;
        (self.cut_rate + config.rate * RECOVERY_PER_SEC * since).clamp(MIN_RATE, config.rate)
    }

    /// Reserves the next slot; returns how long to wait for it (ms).
    pub fn reserve(&mut self, config: &BudgetConfig, now_ms: i64) -> u64 {
        let rate = self.rate(config, now_ms);
        let interval = BudgetConfig::interval_ms(rate);
        let tolerance = interval * f64::from(config.burst.saturating_sub(1));
        let hold = self.hold_until_ms as f64;
        let start = self.tat_ms.max(now_ms as f64).max(hold);
        let allowed = (start - tolerance).max(hold);
        self.tat_ms = start + interval;
        self.config_rate = config.rate;
        self.config_burst = config.burst;
        (allowed - now_ms as f64).max(0.0).ceil() as u64
    }

    /// Reserves `n` consecutive slots; returns when each may start (ms since the epoch).
    pub fn reserve_slots(&mut self, config: &BudgetConfig, now_ms: i64, n: usize) -> Vec<i64> {
        (0..n.max(1))
            .map(|_| now_ms + self.reserve(config, now_ms) as i64)
            .collect()
    }

    /// How many slots to reserve at once at the rate in force: those of
    /// [`PREPAY_WINDOW`], at least one and at most [`MAX_PREPAID`].
    pub fn prepay_count(&self, config: &BudgetConfig, now_ms: i64) -> usize {
        let n = self.rate(config, now_ms) * PREPAY_WINDOW.as_secs_f64();
        (n as usize).clamp(1, MAX_PREPAID)
    }

    /// A 429: halve the rate (once per cooldown), hold every request for `Retry-After`,
    /// and empty the bucket so requests resume one interval apart, not in a burst.
    pub fn throttled(&mut self, config: &BudgetConfig, now_ms: i64, retry_after: Option<Duration>) {
        self.throttled += 1;
        let current = self.rate(config, now_ms);
        if self.cut_ms == 0 || now_ms - self.cut_ms >= CUT_COOLDOWN.as_millis() as i64 {
            self.cut_rate = (current / 2.0).max(MIN_RATE);
            self.cut_ms = now_ms;
        }
        if let Some(wait) = retry_after {
            let until = now_ms.saturating_add(wait.as_millis().min(i64::MAX as u128) as i64);
            self.hold_until_ms = self.hold_until_ms.max(until);
        }
        let rate = self.rate(config, now_ms);
        let interval = BudgetConfig::interval_ms(rate);
        let tolerance = interval * f64::from(config.burst.saturating_sub(1));
        let resume = now_ms.max(self.hold_until_ms) as f64;
        self.tat_ms = self.tat_ms.max(resume + tolerance);
        self.config_rate = config.rate;
        self.config_burst = config.burst;
    }

    /// Would a request made at `now_ms` have to wait longer than a normal spacing?
    pub fn waiting(&self, config: &BudgetConfig, now_ms: i64) -> bool {
        let mut probe = self.clone();
        probe.reserve(config, now_ms) > SHOWN_WAIT.as_millis() as u64
    }
}

/// What progress displays show of a budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BudgetView {
    /// Requests are waiting for the rate limit (or a `Retry-After`) right now.
    pub waiting: bool,
    /// The rate in force, requests per second.
    pub rate: f64,
    /// The configured rate.
    pub configured_rate: f64,
    /// 429s seen on this account.
    pub throttled: u64,
}

/// One account's budget as this process uses it.
pub struct RequestBudget {
    config: BudgetConfig,
    shared: Option<(kv::Store, String)>,
    /// This process's own state: the budget when there is no bucket, and the last seen
    /// shared state otherwise (for status displays).
    local: Mutex<BudgetState>,
    /// Requests of this process waiting for a slot longer than a normal spacing.
    waiting: AtomicUsize,
    waited_ms: AtomicU64,
    fell_back: AtomicBool,
    /// Slots this process reserved ahead (start times, ms since the epoch, in order).
    prepaid: Mutex<std::collections::VecDeque<i64>>,
    /// Changes made to the budget's state (compare-and-sets when shared).
    updates: AtomicU64,
}

impl std::fmt::Debug for RequestBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBudget")
            .field("config", &self.config)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The account's entry key.
fn account_entry(account: &str) -> String {
    format!("acct.{account}")
}

/// The entry naming a job's account (so the console can show the job's budget).
fn job_entry(job: &JobId) -> String {
    format!("job.{job}")
}

/// Opens (or creates) the budget bucket.
pub async fn open_bucket(js: &jetstream::Context) -> Result<kv::Store, String> {
    if let Ok(store) = js.get_key_value(BUDGET_BUCKET).await {
        return Ok(store);
    }
    let created = js
        .create_key_value(kv::Config {
            bucket: BUDGET_BUCKET.into(),
            description: "portshift: shared request budgets per API account".into(),
            history: 1,
            max_age: Duration::from_secs(24 * 3600),
            storage: jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await;
    match created {
        Ok(store) => Ok(store),
        // Another process may have created it at the same moment.
        Err(e) => js
            .get_key_value(BUDGET_BUCKET)
            .await
            .map_err(|_| e.to_string()),
    }
}

impl RequestBudget {
    /// A budget kept in this process only (tests, or no JetStream).
    pub fn local(config: BudgetConfig) -> Self {
        RequestBudget {
            config,
            shared: None,
            local: Mutex::new(BudgetState::default()),
            waiting: AtomicUsize::new(0),
            waited_ms: AtomicU64::new(0),
            fell_back: AtomicBool::new(false),
            prepaid: Mutex::new(Default::default()),
            updates: AtomicU64::new(0),
        }
    }

    /// A budget shared through JetStream by every process using `account` (an opaque
    /// key of `[A-Za-z0-9_-]` characters); `job` is recorded as using it. Falls back to
    /// [`RequestBudget::local`] (with a warning) if the bucket cannot be opened.
    pub async fn shared(
        js: &jetstream::Context,
        account: &str,
        job: Option<&JobId>,
        config: BudgetConfig,
    ) -> Self {
        let mut budget = Self::local(config);
        match open_bucket(js).await {
            Ok(store) => {
                if let Some(job) = job
                    && let Err(e) = store
                        .put(job_entry(job), account.to_owned().into_bytes().into())
                        .await
                {
                    tracing::warn!(error = %e, "could not record the job's request budget for status displays");
                }
                budget.shared = Some((store, account_entry(account)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "the shared request budget is unavailable; limiting this process's requests only");
                budget.fell_back.store(true, Ordering::Relaxed);
            }
        }
        budget
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Waits for this request's slot.
    pub async fn acquire(&self) {
        let now = now_ms();
        let config = self.config;
        let start = match self.take_prepaid(now) {
            Some(start) => start,
            None => {
                let mut slots = self
                    .update(|s| {
                        let n = s.prepay_count(&config, now);
                        s.reserve_slots(&config, now, n)
                    })
                    .await
                    .into_iter();
                let first = slots.next().unwrap_or(now);
                self.prepaid
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(slots);
                first
            }
        };
        let wait = (start - now).max(0) as u64;
        if wait == 0 {
            return;
        }
        let shown = wait > SHOWN_WAIT.as_millis() as u64;
        if shown {
            self.waiting.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
        self.waited_ms.fetch_add(wait, Ordering::Relaxed);
        if shown {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The next slot reserved ahead, if one is still fresh.
    fn take_prepaid(&self, now: i64) -> Option<i64> {
        let mut prepaid = self.prepaid.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(start) = prepaid.pop_front() {
            if start >= now - PREPAID_SHELF_LIFE_MS {
                return Some(start);
            }
        }
        None
    }

    /// Changes made to the budget's state so far (each a compare-and-set when shared).
    pub fn updates(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// The API answered 429 (with this `Retry-After`, if any).
    pub async fn throttled(&self, retry_after: Option<Duration>) {
        // Slots reserved at the old rate must not outlive the cut.
        self.prepaid
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let now = now_ms();
        let config = self.config;
        self.update(|s| s.throttled(&config, now, retry_after))
            .await;
    }

    /// Requests of this process waiting for the rate limit right now.
    pub fn waiting_now(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Total time this process's requests waited for the budget.
    pub fn waited(&self) -> Duration {
        Duration::from_millis(self.waited_ms.load(Ordering::Relaxed))
    }

    /// The budget as last seen by this process.
    pub fn view(&self) -> BudgetView {
        let state = self.local.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let now = now_ms();
        BudgetView {
            waiting: self.waiting_now() > 0 || state.waiting(&self.config, now),
            rate: state.rate(&self.config, now),
            configured_rate: self.config.rate,
            throttled: state.throttled,
        }
    }

    /// Applies `change` to the shared state by compare-and-set (or to the local state),
    /// and returns what it returned.
    async fn update<T>(&self, mut change: impl FnMut(&mut BudgetState) -> T) -> T {
        self.updates.fetch_add(1, Ordering::Relaxed);
        if let Some((store, key)) = &self.shared
            && !self.fell_back.load(Ordering::Relaxed)
        {
            for _ in 0..MAX_CAS_ATTEMPTS {
                let entry = match store.entry(key.clone()).await {
                    Ok(entry) => entry,
                    Err(e) => {
                        self.fall_back(&e.to_string());
                        break;
                    }
                };
                let (mut state, revision) = match entry {
                    Some(e) if e.operation == kv::Operation::Put => (
                        serde_json::from_slice::<BudgetState>(&e.value).unwrap_or_default(),
                        Some(e.revision),
                    ),
                    Some(e) => (BudgetState::default(), Some(e.revision)),
                    None => (BudgetState::default(), None),
                };
                let out = change(&mut state);
                let body: bytes::Bytes = match serde_json::to_vec(&state) {
                    Ok(b) => b.into(),
                    Err(e) => {
                        self.fall_back(&e.to_string());
                        break;
                    }
                };
                let written = match revision {
                    Some(rev) => store.update(key, body, rev).await.map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                    None => store.create(key, body).await.map_err(|e| {
                        (
                            e.kind() == kv::CreateErrorKind::AlreadyExists,
                            e.to_string(),
                        )
                    }),
                };
                match written {
                    Ok(_) => {
                        *self.local.lock().unwrap_or_else(|e| e.into_inner()) = state;
                        return out;
                    }
                    // Another process changed it first: read again.
                    Err((true, _)) => continue,
                    Err((false, e)) => {
                        self.fall_back(&e);
                        break;
                    }
                }
            }
        }
        let mut local = self.local.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut local)
    }

    fn fall_back(&self, why: &str) {
        if !self.fell_back.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why, "the shared request budget failed; limiting this process's requests only from now on");
        }
    }
}

/// Time left at the pace so far: `done` of `total` items settled in `elapsed_secs`
/// (`None` before anything settled, or once everything has).
pub fn eta(done: u64, total: u64, elapsed_secs: f64) -> Option<Duration> {
    if done == 0 || done >= total || !elapsed_secs.is_finite() || elapsed_secs <= 0.0 {
        return None;
    }
    let left = (total - done) as f64 * elapsed_secs / done as f64;
    Some(Duration::from_secs_f64(left.min(1e9)))
}

/// The request budget of `job`'s Chorus account, for progress displays: `None` if the
/// job has not used one (or the bucket is unreachable).
pub async fn job_view(js: &jetstream::Context, job: &JobId) -> Option<BudgetView> {
    let store = js.get_key_value(BUDGET_BUCKET).await.ok()?;
    let account = store.get(job_entry(job)).await.ok()??;
    let account = std::str::from_utf8(&account).ok()?;
    let raw = store.get(account_entry(account)).await.ok()??;
    let state: BudgetState = serde_json::from_slice(&raw).ok()?;
    let config = BudgetConfig {
        rate: if state.config_rate > 0.0 {
            state.config_rate
        } else {
            BudgetConfig::DEFAULT_RATE
        },
        burst: state.config_burst.max(1),
    };
    let now = now_ms();
    Some(BudgetView {
        waiting: state.waiting(&config, now),
        rate: state.rate(&config, now),
        configured_rate: config.rate,
        throttled: state.throttled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(rate: f64, burst: u32) -> BudgetConfig {
        BudgetConfig::new(rate, burst).unwrap()
    }

    #[test]
    fn a_burst_goes_at_once_then_requests_are_spaced_by_the_rate() {
        let c = cfg(4.0, 3);
        let mut s = BudgetState::default();
        let now = 1_000_000;
        let waits: Vec<u64> = (0..6).map(|_| s.reserve(&c, now)).collect();
        assert_eq!(waits, vec![0, 0, 0, 250, 500, 750]);
    }

    #[test]
    fn a_quiet_spell_refills_the_bucket_up_to_the_burst_only() {
        let c = cfg(2.0, 2);
        let mut s = BudgetState::default();
        for _ in 0..4 {
            s.reserve(&c, 0);
        }
        // Ten seconds later: two go at once, the third waits half a second.
        let later = 10_000;
        assert_eq!(s.reserve(&c, later), 0);
        assert_eq!(s.reserve(&c, later), 0);
        assert_eq!(s.reserve(&c, later), 500);
    }

    #[test]
    fn a_429_halves_the_rate_once_per_cooldown_and_it_recovers_slowly() {
        let c = cfg(10.0, 1);
        let mut s = BudgetState::default();
        s.throttled(&c, 1_000, None);
        assert_eq!(s.rate(&c, 1_000), 5.0);
        // The in-flight requests' 429s right after do not cut again.
        s.throttled(&c, 1_100, None);
        s.throttled(&c, 1_200, None);
        assert_eq!(s.rate(&c, 1_200), 5.0 + 10.0 * RECOVERY_PER_SEC * 0.2);
        assert_eq!(s.throttled, 3);
        // After the cooldown a 429 cuts again.
        s.throttled(&c, 3_500, None);
        assert!(s.rate(&c, 3_500) < 3.0, "{}", s.rate(&c, 3_500));
        // Recovery: slow (not back after 10 s), complete after two minutes.
        assert!(s.rate(&c, 13_500) < 5.0);
        assert_eq!(s.rate(&c, 3_500 + 120_000), 10.0);
    }

    #[test]
    fn retry_after_holds_every_request_and_then_they_resume_spaced() {
        let c = cfg(4.0, 4);
        let mut s = BudgetState::default();
        s.throttled(&c, 0, Some(Duration::from_secs(3)));
        assert!(s.waiting(&c, 100));
        // The rate is now 2/s: the first request at 3 s, the next ones 500 ms apart.
        let first = s.reserve(&c, 100);
        let second = s.reserve(&c, 100);
        assert!((2_900..2_910).contains(&first), "{first}");
        assert!((495..=505).contains(&(second - first)), "{first} {second}");
    }

    #[test]
    fn without_retry_after_a_429_still_empties_the_bucket() {
        let c = cfg(4.0, 4);
        let mut s = BudgetState::default();
        s.throttled(&c, 0, None);
        // No burst right after a 429: the rate is halved and the bucket empty, so one
        // request goes and the next ones follow 500 ms apart.
        let waits: Vec<u64> = (0..3).map(|_| s.reserve(&c, 0)).collect();
        assert_eq!(waits, vec![0, 500, 1_000]);
    }

    #[test]
    fn the_rate_never_falls_below_the_floor() {
        let c = cfg(1.0, 1);
        let mut s = BudgetState::default();
        for i in 0..40 {
            s.throttled(&c, i * 3_000, None);
        }
        assert_eq!(s.rate(&c, 39 * 3_000), MIN_RATE);
    }

    #[test]
    fn bad_budgets_are_refused_with_what_to_give() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 20_000.0] {
            let e = BudgetConfig::new(rate, 1).unwrap_err().to_string();
            assert!(e.contains("give a number"), "{e}");
        }
        assert!(BudgetConfig::new(3.0, 0).is_err());
        assert!(BudgetConfig::new(3.0, 5).is_ok());
    }

    #[test]
    fn eta_is_the_pace_so_far() {
        assert_eq!(eta(0, 10, 5.0), None);
        assert_eq!(eta(10, 10, 5.0), None);
        assert_eq!(eta(25, 100, 10.0), Some(Duration::from_secs(30)));
    }

    #[tokio::test]
    async fn a_local_budget_spaces_requests_in_real_time() {
        let b = RequestBudget::local(cfg(20.0, 1));
        let started = std::time::Instant::now();
        for _ in 0..6 {
            b.acquire().await;
        }
        // Five gaps of 50 ms.
        assert!(started.elapsed() >= Duration::from_millis(240));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn reserving_several_slots_is_reserving_them_one_by_one() {
        let c = cfg(50.0, 3);
        let (mut one, mut many) = (BudgetState::default(), BudgetState::default());
        let now = 1_000_000;
        let singly: Vec<i64> = (0..7).map(|_| now + one.reserve(&c, now) as i64).collect();
        assert_eq!(many.reserve_slots(&c, now, 7), singly);
        assert_eq!(one, many);
        // 50 per second: the slots of 100 ms are 5; the default 2 per second gives 1.
        assert_eq!(BudgetState::default().prepay_count(&c, now), 5);
        assert_eq!(
            BudgetState::default().prepay_count(&BudgetConfig::default(), now),
            1
        );
    }

    #[tokio::test]
    async fn at_high_rates_one_reservation_serves_many_requests_and_keeps_the_rate() {
        let budget = RequestBudget::local(cfg(500.0, 1));
        let started = std::time::Instant::now();
        for _ in 0..100 {
            budget.acquire().await;
        }
        // 100 requests at 500 per second take 198 ms at least (the first goes at once).
        assert!(
            started.elapsed() >= Duration::from_millis(190),
            "{:?}",
            started.elapsed()
        );
        // 50 slots per reservation at 500/s, capped at 16: 7 reservations, not 100.
        assert!(budget.updates() <= 8, "{} reservations", budget.updates());

        // At the default rate every request reserves its own slot.
        let default = RequestBudget::local(BudgetConfig::default());
        default.acquire().await;
        assert_eq!(default.updates(), 1);
    }

    #[tokio::test]
    async fn a_429_drops_the_slots_reserved_ahead() {
        let budget = RequestBudget::local(cfg(1000.0, 1));
        budget.acquire().await;
        assert!(!budget.prepaid.lock().unwrap().is_empty());
        budget.throttled(None).await;
        assert!(budget.prepaid.lock().unwrap().is_empty());
    }
}
