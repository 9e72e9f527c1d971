//! portshift's core: the job model, the stage messages and their JetStream topology,
//! the stage runner (pull, ack only when durable, nak with backoff, dead-letter), the
//! job store (SQLite or PostgreSQL), secrets and the embedded `nats-server`.
//!
//! This crate knows nothing of Chorus, destinations or the console: stages and the UI
//! depend on it, never the other way round.

/// A small enum stored and typed as lower-case words (a role, a plan): `as_str`,
/// `FromStr` and `Display` from one table, so the words and the error listing them
/// cannot drift apart. `$what` names the thing in the error (`unknown role "x": use
/// owner, admin or member`).
macro_rules! word_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $word),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($ty::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}: use {}",
                        $what,
                        crate::one_of(&[$($word),+])
                    )),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// `a`, `a or b`, `a, b or c`: the choices an error message offers.
fn one_of(words: &[&str]) -> String {
    match words.split_last() {
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

pub mod accounts;
pub mod aws_role;
pub mod backoff;
pub mod backup;
pub mod billing;
pub mod config;
pub mod destination_url;
pub mod embedded_nats;
pub mod http_client;
pub mod human;
pub mod job;
pub mod keys;
pub mod leases;
pub mod memory;
pub mod messages;
pub mod rate_budget;
pub mod replay;
pub mod retention;
pub mod runner;
pub mod schedules;
pub mod schema;
pub mod secrets;
pub mod shutdown;
pub mod signing;
pub mod start;
pub mod store;
pub mod tenancy;
pub mod tls;
pub mod topology;
pub mod worker_process;

pub use job::{ExportKinds, ExportOptions, FileKind, JobId, JobSpec, JobStatus, Layout};

pub use job::{Trust, TrustLevel};

#[cfg(test)]
mod word_enum_tests {
    use crate::accounts::Role;
    use crate::billing::Plan;

    #[test]
    fn words_round_trip_and_a_refusal_lists_them() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        for plan in Plan::ALL {
            assert_eq!(plan.as_str().parse::<Plan>(), Ok(plan));
        }
        assert_eq!(
            "Owner".parse::<Role>(),
            Err("unknown role \"Owner\": use owner, admin or member".to_string())
        );
        assert_eq!(
            "gold".parse::<Plan>(),
            Err("unknown plan \"gold\": use trial, team or enterprise".to_string())
        );
    }
}
