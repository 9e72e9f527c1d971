//! Erasure checked in every table of the job store, on SQLite and on PostgreSQL, through
//! the real router (real `nats-server`, real databases):
//! - an organisation is given a row in *every* table (the test enumerates the tables
//!   from the database itself and fails on a table it did not fill, so a new table is
//!   covered the day it is added), then the owner deletes the organisation and every
//!   member deletes their account;
//! - afterwards no row of any table holds the organisation's id, its jobs' or
//!   schedules' ids, its Stripe customer, its users' ids, e-mail addresses or their
//!   rate-limit key; an audit row in *another* organisation keeps only the pseudonym;
//! - the bytes: SQLite's file and WAL hold no address; on a private PostgreSQL, after
//!   CHECKPOINT the data directory still holds the address (dead tuples, WAL: the
//!   control that shows the search can find it), and after the documented procedure
//!   (VACUUM FULL, WAL switch with `wal_recycle=off`, CHECKPOINT) it holds none.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::StatusCode;
use common::{NoWorkers, nats_in};
use pipeline::accounts::{Accounts, Role, TokenPurpose, User};
use pipeline::billing::{Billing, Prices, StripeEvent};
use pipeline::embedded_nats::EmbeddedNats;
use pipeline::store::JobStore;
use serde_json::{Value, json};
use sqlx::Row;
use test_support::env_or_fail;
use test_support::files::files_containing;
use test_support::orgs::{org_with, tenant_schedule};
use test_support::postgres::fresh_database_on;
use ui::AppState;

const PASSWORD: &str = "tangerine-orbit-Violin-42";

/// Where the store lives, and a direct connection to read every table.
enum Db {
    Sqlite(PathBuf),
    Postgres(String),
}

struct World {
    _tmp: tempfile::TempDir,
    _nats: EmbeddedNats,
    store: JobStore,
    accounts: Accounts,
    state: ui::Shared,
    db: Db,
}

async fn world(db: Db, tmp: tempfile::TempDir) -> World {
    let (nats, js) = nats_in(tmp.path()).await;
    let store = match &db {
        Db::Sqlite(dir) => JobStore::open_sqlite_in(dir).await.unwrap(),
        Db::Postgres(url) => JobStore::connect(url).await.unwrap(),
    };
    let state = AppState::new(store.clone(), js, Arc::new(NoWorkers))
        .await
        .unwrap();
    World {
        accounts: Accounts::new(&store),
        _tmp: tmp,
        _nats: nats,
        store,
        state,
        db,
    }
}

async fn fresh_postgres_db(base: &str) -> String {
    fresh_database_on(base, "t").await.to_string()
}

/// Column `col` of every row that `sql` returns, as text.
macro_rules! texts {
    ($pool:expr, $sql:expr, $col:expr) => {
        sqlx::query($sql)
            .fetch_all($pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>($col))
            .collect::<Vec<String>>()
    };
}

/// Every table of the store with each row rendered as one text (all columns).
async fn every_row(db: &Db) -> Vec<(String, Vec<String>)> {
    let mut out = vec![];
    match db {
        Db::Sqlite(dir) => {
            let url = format!("sqlite://{}", dir.join("portshift.sqlite3").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let tables: Vec<String> = texts!(
                &pool,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
                0
            );
            for t in tables {
                let cols = texts!(&pool, &format!("PRAGMA table_info({t})"), "name");
                let expr = cols
                    .iter()
                    .map(|c| format!("quote({c})"))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                let rows = texts!(&pool, &format!("SELECT {expr} FROM {t}"), 0);
                out.push((t, rows));
            }
            pool.close().await;
        }
        Db::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let tables: Vec<String> = texts!(
                &pool,
                "SELECT table_name::text FROM information_schema.tables \
                 WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
                0
            );
            for t in tables {
                let rows = texts!(&pool, &format!("SELECT t::text FROM {t} t"), 0);
                out.push((t, rows));
            }
            pool.close().await;
        }
    }
    out
}

async fn api(
    w: &World,
    method: &str,
    path: &str,
    s: &(String, String),
    body: Value,
) -> (StatusCode, Value) {
    let (status, json, _) = common::api(&w.state, method, path, Some(s), Some(body)).await;
    (status, json)
}

/// What must be gone after the erasure, and what must stay.
struct Canaries {
    gone: Vec<String>,
    /// Another organisation's owner: still there (the search does find what exists).
    kept_email: String,
    /// The pseudonym of the member who also acted in the other organisation.
    pseudonym: String,
    users: Vec<(User, (String, String))>,
    org: String,
}

/// An organisation with a row in every table, made through the product's own paths
/// where one exists and by plain SQL for the rows only a worker writes.
async fn populate(w: &World) -> Canaries {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let hash = ui::auth::hash_password(PASSWORD).unwrap();
    let mut users = vec![];
    for who in ["owner", "admin", "member"] {
        let u = w
            .accounts
            .create_user(&format!("erase-{who}-{tag}@canary.example"), &hash)
            .await
            .unwrap();
        let s = ui::auth::issue_session(&w.accounts, &u).await.unwrap();
        users.push((u, s));
    }
    let (owner, admin, member) = (&users[0].0, &users[1].0, &users[2].0);
    let members = [(admin, Role::Admin), (member, Role::Member)];
    let org = org_with(
        &w.accounts,
        &format!("Erasure Canary {tag}"),
        owner,
        &members,
    )
    .await;
    let invitee = format!("erase-invitee-{tag}@canary.example");
    w.accounts
        .invite(&org.id, &invitee, Role::Member, &owner.email)
        .await
        .unwrap();
    // An export through the API: the job, the month's usage, the user's rate-limit
    // counter, an audit row.
    let (st, b) = api(
        w,
        "POST",
        &format!("/api/v1/orgs/{}/jobs", org.id),
        &users[2].1,
        json!({
            "chorus_url": "https://chorus.example/",
            "from": "2024-01-01", "to": "2024-01-31",
            "media": true, "transcript": true, "metadata": false,
            "destination": "s3://bucket/prefix?region=eu-west-1",
            "chorus_token": "t", "s3_access_key_id": "AKIAEXAMPLE", "s3_secret_access_key": "s",
        }),
    )
    .await;
    assert!(st.is_success(), "start export: {st} {b}");
    let job = b["id"]
        .as_str()
        .or(b["job"].as_str())
        .expect("job id")
        .to_string();
    let schedule = tenant_schedule(&w.store, &org.id, &format!("nightly-{tag}"), 3600).await;
    // The rows a worker and the scheduler write.
    let now = chrono::Utc::now().timestamp_millis();
    let sql = [
        format!(
            "INSERT INTO recordings (job_id, recording_id, status, updated_ms) VALUES ('{job}', 'rec-{tag}', 'exported', {now})"
        ),
        format!(
            "INSERT INTO files (job_id, recording_id, file, object_key, bytes, sha256, content_type, updated_ms) VALUES ('{job}', 'rec-{tag}', 'media', 'k/{job}', 1, 'x', 'audio/mpeg', {now})"
        ),
        format!(
            "INSERT INTO list_pages (job_id, continuation_key, page) VALUES ('{job}', 'ck-{tag}', 1)"
        ),
        format!(
            "INSERT INTO open_uploads (job_id, object_key, upload_id, created_ms) VALUES ('{job}', 'k/{job}', 'up-{tag}', {now})"
        ),
        format!(
            "INSERT INTO schedule_runs (schedule_id, slot_ms, job_id, status, created_ms, updated_ms) VALUES ('{schedule}', {now}, '{job}', 'running', {now}, {now})"
        ),
        format!(
            "INSERT INTO schedule_exported (schedule_id, destination, recording_id, job_id) VALUES ('{schedule}', 'file:///tmp/x', 'rec-{tag}', '{job}')"
        ),
        format!(
            "INSERT INTO worker_leases (worker_id, job_id, host, pid, started_ms, renewed_ms, expires_ms) VALUES ('w-{tag}', '{job}', 'host-{tag}', 1, {now}, {now}, {now})"
        ),
    ];
    exec(&w.db, &sql).await;
    w.store.aws_external_id(&org.id).await.unwrap();
    w.accounts
        .create_email_token(
            &format!("tok-{tag}"),
            &member.id,
            TokenPurpose::Reset,
            now + 3_600_000,
        )
        .await
        .unwrap();
    // Billing: the Stripe link, an applied webhook event, the usage (from the export).
    let customer = format!("cus_erase_{tag}");
    let billing = Billing::new(&w.store);
    billing.link_customer(&org.id, &customer).await.unwrap();
    let ev = StripeEvent::parse(
        json!({"id": format!("evt_erase_{tag}"), "type": "customer.subscription.created",
               "created": now / 1000, "data": {"object": {"id": format!("sub_erase_{tag}"),
               "customer": customer, "status": "active",
               "items": {"data": [{"price": {"id": "price_team_erase"}}]}}}})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let prices = Prices {
        team: Some("price_team_erase".into()),
        enterprise: None,
    };
    billing.apply(&ev, &prices).await.unwrap();
    // Another organisation, where the admin also acted: that row must outlive them
    // with a pseudonym.
    let keeper = w
        .accounts
        .create_user(&format!("erase-keeper-{tag}@canary.example"), &hash)
        .await
        .unwrap();
    let other = org_with(&w.accounts, "Other Ltd", &keeper, &[(admin, Role::Member)]).await;
    w.accounts
        .audit(
            &other.id,
            &admin.email,
            "export.started",
            &format!("{} started a job", admin.email),
        )
        .await
        .unwrap();
    let mut gone = vec![
        org.id.clone(),
        job,
        schedule,
        customer,
        invitee,
        format!("Erasure Canary {tag}"),
    ];
    for (u, _) in &users {
        gone.push(u.email.clone());
        gone.push(u.id.clone());
        gone.push(ui::auth::sha256_hex(
            format!("{}|user|{}", w.state.ip_salt, u.id).as_bytes(),
        ));
    }
    Canaries {
        gone,
        kept_email: keeper.email,
        pseudonym: pipeline::accounts::pseudonym(&admin.id),
        users,
        org: org.id,
    }
}

async fn exec(db: &Db, statements: &[String]) {
    match db {
        Db::Sqlite(dir) => {
            let url = format!("sqlite://{}", dir.join("portshift.sqlite3").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            for s in statements {
                sqlx::query(s).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
        Db::Postgres(url) => {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            for s in statements {
                sqlx::query(s).execute(&pool).await.unwrap();
            }
            pool.close().await;
        }
    }
}

/// Tables that cannot hold an organisation's data.
const NOT_ORG_DATA: &[&str] = &["_sqlx_migrations"];

/// Fills every table, deletes the organisation and each member's account through the
/// API, and checks every row of every table.
async fn erase_and_check_every_table(w: &World) -> Canaries {
    let c = populate(w).await;
    let before = every_row(&w.db).await;
    assert!(before.len() >= 20, "found only {} tables", before.len());
    for (table, rows) in &before {
        if NOT_ORG_DATA.contains(&table.as_str()) {
            continue;
        }
        assert!(
            rows.iter()
                .any(|r| c.gone.iter().any(|n| r.contains(n.as_str()))),
            "table {table} holds no row of the organisation: give it one in populate() so the erasure check covers it"
        );
    }
    // The last owner cannot leave first; the owner deletes the organisation, then every
    // member their account.
    let owner = &c.users[0].1;
    let (st, _) = api(
        w,
        "DELETE",
        "/api/v1/me",
        owner,
        json!({"password": PASSWORD}),
    )
    .await;
    assert_eq!(st, StatusCode::CONFLICT);
    let (st, b) = api(
        w,
        "DELETE",
        &format!("/api/v1/orgs/{}", c.org),
        owner,
        json!({}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{b}");
    for (u, s) in &c.users {
        let (st, b) = api(w, "DELETE", "/api/v1/me", s, json!({"password": PASSWORD})).await;
        assert_eq!(st, StatusCode::OK, "{}: {b}", u.email);
    }
    let after = every_row(&w.db).await;
    let mut leftovers = vec![];
    for (table, rows) in &after {
        for r in rows {
            for n in &c.gone {
                if r.contains(n.as_str()) {
                    leftovers.push(format!("{table}: {n} in {r}"));
                }
            }
        }
    }
    assert!(
        leftovers.is_empty(),
        "erased data still in the store:\n{}",
        leftovers.join("\n")
    );
    // Positive controls: the other organisation's data is all there, and its audit row
    // names the erased member by pseudonym.
    let all: Vec<&String> = after.iter().flat_map(|(_, r)| r).collect();
    assert!(
        all.iter().any(|r| r.contains(&c.kept_email)),
        "the search found nothing at all"
    );
    assert!(
        after.iter().any(|(t, rows)| t == "audit_events"
            && rows
                .iter()
                .any(|r| r.contains(&c.pseudonym) && r.contains("export.started"))),
        "the other organisation's audit row lost its pseudonymised actor"
    );
    assert!(w.accounts.org(&c.org).await.unwrap().is_none());
    c
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_organisation_and_its_members_empties_every_sqlite_table_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    std::fs::create_dir_all(&dir).unwrap();
    let w = world(Db::Sqlite(dir.clone()), tmp).await;
    let c = erase_and_check_every_table(&w).await;
    // Not a byte of an address in the database file or its WAL.
    let mut bytes = std::fs::read(dir.join("portshift.sqlite3")).unwrap();
    bytes.extend(std::fs::read(dir.join("portshift.sqlite3-wal")).unwrap_or_default());
    assert!(
        contains(&bytes, &c.kept_email),
        "the byte search finds what is kept"
    );
    for (u, _) in &c.users {
        assert!(
            !contains(&bytes, &u.email),
            "{} is still in the SQLite files",
            u.email
        );
    }
    assert!(!contains(&bytes, &c.org));
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_an_organisation_and_its_members_empties_every_postgres_table() {
    let url = fresh_postgres_db(&env_or_fail("PORTSHIFT_TEST_POSTGRES_URL")).await;
    let w = world(Db::Postgres(url), tempfile::tempdir().unwrap()).await;
    erase_and_check_every_table(&w).await;
}

// --- the PostgreSQL data directory ----------------------------------------------------------

/// A private PostgreSQL in a temporary folder, so its data directory holds this test's
/// data only. Runs as the `postgres` user when the test runs as root (PostgreSQL refuses
/// root), like deploy/local/start.sh.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

fn pg_bin() -> PathBuf {
    std::env::var("PORTSHIFT_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn as_pg(cmd: &Path) -> std::process::Command {
    if unsafe { libc_geteuid() } == 0 {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        std::process::Command::new(cmd)
    }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

impl PrivatePg {
    fn start() -> Self {
        let bin = pg_bin();
        assert!(
            bin.join("initdb").exists(),
            "no PostgreSQL at {} (PORTSHIFT_TEST_PG_BIN)",
            bin.display()
        );
        // Under /tmp: the postgres user must be able to reach it.
        let dir = tempfile::Builder::new()
            .prefix("portshift-erasure-pg-")
            .tempdir_in("/tmp")
            .unwrap();
        let data = dir.path().join("data");
        if unsafe { libc_geteuid() } == 0 {
            let ok = std::process::Command::new("chown")
                .args(["postgres:", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let out = as_pg(&bin.join("initdb"))
            .args(["-D", data.to_str().unwrap()])
            .args(test_support::postgres::INITDB_FLAGS)
            .current_dir("/")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // wal_recycle=off: finished WAL segments are removed, not renamed for reuse with
        // their old bytes in them. Everything else is PostgreSQL's default.
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c wal_recycle=off -c fsync=off",
            dir.path().display()
        );
        let out = as_pg(&bin.join("pg_ctl"))
            .args([
                "-D",
                data.to_str().unwrap(),
                "-l",
                dir.path().join("log").to_str().unwrap(),
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "start",
            ])
            .current_dir("/")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PrivatePg { dir, bin, port }
    }
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = as_pg(&self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.data().to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ])
            .current_dir("/")
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_keeps_erased_bytes_until_vacuum_full_and_a_wal_switch() {
    let pg = PrivatePg::start();
    let url = fresh_postgres_db(&pg.url()).await;
    let w = world(Db::Postgres(url.clone()), tempfile::tempdir().unwrap()).await;
    let c = erase_and_check_every_table(&w).await;
    let emails: Vec<&str> = c.users.iter().map(|(u, _)| u.email.as_str()).collect();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
    let found = |needle: &str| !files_containing(&pg.data(), needle.as_bytes()).is_empty();
    let found_erased = || -> Vec<String> {
        emails
            .iter()
            .filter(|e| found(e))
            .map(|e| e.to_string())
            .collect()
    };
    // Control: deleted rows are only marked dead, and the WAL holds every insert: the
    // byte search finds the addresses after the rows are gone from every table.
    let before = found_erased();
    assert!(
        !before.is_empty(),
        "the byte search found no erased address before VACUUM: it could not fail"
    );
    // The documented procedure: rewrite the tables, move to a new WAL segment twice
    // (the old ones are removed, not recycled), checkpoint.
    let tables: Vec<String> = texts!(
        &pool,
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
        0
    );
    for t in &tables {
        sqlx::query(&format!("VACUUM FULL {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        sqlx::query("SELECT pg_switch_wal()")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
    }
    pool.close().await;
    assert!(
        found(&c.kept_email),
        "the byte search finds the kept address"
    );
    let after = found_erased();
    assert!(
        after.is_empty(),
        "erased addresses still in PostgreSQL's data directory: {after:?}"
    );
}
