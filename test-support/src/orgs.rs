//! Organisations as the console's tests need them: an owner's organisation with members
//! in given roles, and a tenant's schedule in it (credential references only, as always).

use pipeline::accounts::{Accounts, Organisation, Role, User};
use pipeline::schedules::{CredentialRefs, Schedule, ScheduleTemplate};
use pipeline::store::JobStore;

/// `owner`'s new organisation `name`, with each of `members` in its role.
pub async fn org_with(
    accounts: &Accounts,
    name: &str,
    owner: &User,
    members: &[(&User, Role)],
) -> Organisation {
    let org = accounts.create_org(name, owner).await.unwrap();
    for (u, role) in members {
        accounts.set_role(&org.id, &u.id, *role).await.unwrap();
    }
    org
}

/// A tenant's nightly schedule `name` in `org`, exporting the last `lookback_s` seconds
/// into a file destination, its Chorus token referenced from the environment; returns
/// its id.
pub async fn tenant_schedule(store: &JobStore, org: &str, name: &str, lookback_s: i64) -> String {
    nightly_tenant_schedule(store, org, name, "Europe/Helsinki", lookback_s)
        .await
        .id
}

/// [`tenant_schedule`] at 02:00 in `timezone`, returning the whole schedule.
pub async fn nightly_tenant_schedule(
    store: &JobStore,
    org: &str,
    name: &str,
    timezone: &str,
    lookback_s: i64,
) -> Schedule {
    store
        .create_schedule(
            org,
            name,
            "0 2 * * *",
            timezone,
            &ScheduleTemplate {
                chorus_url: "https://chorus.example/".into(),
                kinds: Default::default(),
                destination: "file:///tmp/x".into(),
                webhook_url: None,
                lookback_s,
                options: Default::default(),
            },
            &CredentialRefs {
                chorus_token: "env:CHORUS_API_TOKEN".into(),
                s3: None,
                webhook_secret: None,
                azure: None,
                gcs: None,
            },
            "2024-01-01T00:00:00Z".parse().unwrap(),
            pipeline::TrustLevel::Tenant,
        )
        .await
        .unwrap()
}
