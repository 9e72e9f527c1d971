//! The process-wide TLS setup every TLS client of the core shares (NATS, PostgreSQL).
//! It sits below the store and the service configuration, which both need it.

/// Chooses rustls's process-wide crypto provider (ring), unless the process already
/// chose. async-nats and sqlx's PostgreSQL TLS build their rustls configs with the
/// process default; with more than one provider compiled in (ring for NATS, aws-lc-rs
/// for the AWS SDK) rustls cannot pick one and panics on the first TLS handshake.
/// Everything that opens a TLS connection through those crates calls this first.
pub fn install_crypto_provider() {
    let _ = async_nats::rustls::crypto::ring::default_provider().install_default();
}
