//! `portshift chorus-sim`: serves the Chorus API simulator on loopback until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;

use stages::chorus::{Faults, SimConfig};

#[derive(clap::Args)]
pub struct SimArgs {
    /// Recordings in the simulated account.
    #[arg(long, default_value_t = 100)]
    recordings: usize,
    /// Seed of the generated recordings (same seed, same recordings and media bytes).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The API's address.
    #[arg(long, default_value = "127.0.0.1:18700")]
    listen: SocketAddr,
    /// The media host (a different origin, so the token must not be forwarded to it).
    #[arg(long, default_value = "127.0.0.1:18701")]
    media_listen: SocketAddr,
    /// The API token the simulator accepts.
    #[arg(
        long,
        env = "CHORUS_SIM_TOKEN",
        default_value = "portshift-sim-token",
        hide_env_values = true
    )]
    token: String,
    /// Recordings per page of the list API.
    #[arg(long, default_value_t = 100)]
    page_size: usize,
    /// Smallest media file, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    min_size: u64,
    /// Largest media file, bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_size: u64,
    /// Every n-th recording gets --large-size bytes (0 = none).
    #[arg(long, default_value_t = 0)]
    large_every: u64,
    /// Size of the large recordings of --large-every, bytes.
    #[arg(long, default_value_t = 70 * 1024 * 1024)]
    large_size: u64,
    /// Every n-th recording is private: never listed, 404 (0 = none).
    #[arg(long, default_value_t = 0)]
    private_every: u64,
    /// Every n-th recording is deleted: listed, but 404 on details and media (0 = none).
    #[arg(long, default_value_t = 0)]
    deleted_every: u64,
    /// Probability of a 429 per request (with bursts of --burst-429).
    #[arg(long, default_value_t = 0.0)]
    fault_429: f64,
    /// 429s in a row once one is sent.
    #[arg(long, default_value_t = 3)]
    burst_429: u32,
    /// The Retry-After of a 429, seconds.
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Probability of a 5xx per request.
    #[arg(long, default_value_t = 0.0)]
    fault_5xx: f64,
    /// Probability that a media body is cut short.
    #[arg(long, default_value_t = 0.0)]
    fault_truncate: f64,
    /// Latency added to each API request, ms.
    #[arg(long, default_value_t = 0)]
    slow_ms: u64,
    /// A hard rate limit like a real API's: an API request when this many were answered
    /// in the last second gets 429 (with --retry-after; 0 there sends none). 0 = no limit.
    #[arg(long, default_value_t = 0)]
    limit_per_sec: u32,
}

pub async fn run(a: SimArgs) -> anyhow::Result<ExitCode> {
    let mut config = SimConfig::demo(a.recordings, a.seed);
    config.token = a.token;
    config.page_size = a.page_size.max(1);
    config.sizes.min = a.min_size;
    config.sizes.max = a.max_size.max(a.min_size);
    config.sizes.large_every = a.large_every;
    config.sizes.large_size = a.large_size;
    config.private_every = a.private_every;
    config.deleted_every = a.deleted_every;
    config.faults = Faults {
        rate_429: a.fault_429,
        burst_429: a.burst_429,
        retry_after_secs: a.retry_after,
        rate_5xx: a.fault_5xx,
        rate_truncate: a.fault_truncate,
        slow_ms: a.slow_ms,
        limit_per_sec: a.limit_per_sec,
        ..Faults::default()
    };
    let handle = stages::chorus::sim::start(config, a.listen, a.media_listen).await?;
    println!(
        "Chorus simulator: API {} (media {}); Ctrl-C stops it",
        handle.api_url, handle.media_url
    );
    pipeline::shutdown::signal().await;
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
