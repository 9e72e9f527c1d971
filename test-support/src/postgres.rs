//! Fresh databases on a PostgreSQL server, so each test has a job store of its own
//! while the tests share one server.

use crate::env_or_fail;

/// The `initdb` flags (after `-D DIR`) of the throwaway PostgreSQL clusters some tests
/// run themselves: superuser `postgres`, trusted local connections, UTF-8 in the C
/// locale, and no waiting for the new files to reach the disk.
pub const INITDB_FLAGS: [&str; 6] = [
    "-U",
    "postgres",
    "--auth=trust",
    "--encoding=UTF8",
    "--locale=C.UTF-8",
    "--no-sync",
];

/// A new empty database on the server at `base` (a URL whose user may create
/// databases), its name starting with `prefix`; returns its URL.
pub async fn fresh_database_on(base: &str, prefix: &str) -> url::Url {
    let admin = sqlx::PgPool::connect(base).await.unwrap();
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let mut url = url::Url::parse(base).unwrap();
    url.set_path(&name);
    url
}

/// [`fresh_database_on`] the project's test server (`PORTSHIFT_TEST_POSTGRES_URL`).
pub async fn fresh_database(prefix: &str) -> url::Url {
    fresh_database_on(&env_or_fail("PORTSHIFT_TEST_POSTGRES_URL"), prefix).await
}
