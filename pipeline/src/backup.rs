//! Backups of the job store: a consistent copy taken while portshift runs, and its
//! restore into an empty store.
//!
//! - SQLite: `VACUUM INTO` writes a transactionally consistent copy of the live
//!   database (readers and writers go on meanwhile); the backup is a SQLite file.
//! - PostgreSQL: `pg_dump` (one snapshot, online) in its custom format, uncompressed so
//!   a byte search of the backup means something; restored with `pg_restore`.
//!
//! The password of a PostgreSQL URL goes to `pg_dump`/`pg_restore` in `PGPASSWORD`,
//! never on their command line. A restore refuses a store that already holds data.
//! The job store holds no credentials (DESIGN.md, "Trust"), so neither does a backup;
//! it does hold account e-mail addresses and password hashes: keep backups private.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use crate::store::{JobStore, StoreError, redact_url};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("backup query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "could not run {program}: {source}. Install the PostgreSQL client tools of the server's version \
         (Debian: postgresql-client), or give its path with {option}"
    )]
    Tool {
        program: String,
        option: &'static str,
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    ToolFailed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error(
        "the store at {url} is not empty ({tables}). A restore only goes into an empty store: \
         point --database-url (or --data-dir) at a new database, or back this one up and clear it first"
    )]
    NotEmpty { url: String, tables: String },
    #[error(
        "{path} is a {found} backup but the store at {url} is {wanted}: restore into a store of the same kind"
    )]
    WrongKind {
        path: String,
        found: &'static str,
        wanted: &'static str,
        url: String,
    },
    #[error(
        "{0} is not a portshift backup (neither a SQLite database nor a pg_dump custom archive)"
    )]
    NotABackup(String),
    #[error(
        "{0} is not a job store URL portshift can back up: use sqlite://<path> or postgres://…"
    )]
    Url(String),
}

/// Which database a store, or a backup, is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupKind {
    Sqlite,
    Postgres,
}

impl BackupKind {
    pub fn of_url(url: &str) -> Result<Self, BackupError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Self::Postgres)
        } else {
            Err(BackupError::Url(redact_url(url)))
        }
    }

    /// The kind of a backup file, from its first bytes.
    pub fn of_file(path: &Path) -> Result<Self, BackupError> {
        use std::io::Read;
        let mut head = [0u8; 16];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|source| BackupError::Io {
                what: "could not read the backup",
                path: path.display().to_string(),
                source,
            })?;
        if n >= 16 && &head[..16] == b"SQLite format 3\0" {
            Ok(Self::Sqlite)
        } else if n >= 5 && &head[..5] == b"PGDMP" {
            Ok(Self::Postgres)
        } else {
            Err(BackupError::NotABackup(path.display().to_string()))
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// The PostgreSQL client tools (`pg_dump`, `pg_restore`): found on PATH unless given.
#[derive(Clone, Debug)]
pub struct PgTools {
    pub pg_dump: PathBuf,
    pub pg_restore: PathBuf,
}

impl Default for PgTools {
    fn default() -> Self {
        Self {
            pg_dump: "pg_dump".into(),
            pg_restore: "pg_restore".into(),
        }
    }
}

/// The file of a `sqlite://` URL.
fn sqlite_path(url: &str) -> Result<PathBuf, BackupError> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| BackupError::Url(url.to_string()))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Err(BackupError::Url(url.to_string()));
    }
    Ok(PathBuf::from(path))
}

/// A libpq URL without its password, and the password (for `PGPASSWORD`).
fn libpq_url(url: &str) -> Result<(String, Option<String>), BackupError> {
    let mut u = url::Url::parse(url).map_err(|_| BackupError::Url(redact_url(url)))?;
    let password = u.password().map(percent_decode);
    let _ = u.set_password(None);
    Ok((u.to_string(), password))
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("p={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

async fn run_tool(
    program: &Path,
    option: &'static str,
    args: &[String],
    password: Option<&str>,
) -> Result<(), BackupError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().await.map_err(|source| BackupError::Tool {
        program: program.display().to_string(),
        option,
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BackupError::ToolFailed {
            program: program.display().to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Writes a consistent backup of the store at `url` to `to` (a new file; the caller
/// renames it into place). Safe while servers and workers use the store.
pub async fn backup(url: &str, to: &Path, tools: &PgTools) -> Result<BackupKind, BackupError> {
    let kind = BackupKind::of_url(url)?;
    match kind {
        BackupKind::Sqlite => {
            // Migrated first, so the copy has every table this portshift knows.
            let store = JobStore::connect(url).await?;
            let target = to.display().to_string().replace('\'', "''");
            let done = sqlx::query(&format!("VACUUM INTO '{target}'"))
                .execute(&store.pool)
                .await;
            store.close().await;
            done?;
        }
        BackupKind::Postgres => {
            let (libpq, password) = libpq_url(url)?;
            run_tool(
                &tools.pg_dump,
                "--pg-dump",
                &[
                    "--format=custom".into(),
                    "--compress=0".into(),
                    "--no-owner".into(),
                    "--no-privileges".into(),
                    format!("--file={}", to.display()),
                    format!("--dbname={libpq}"),
                ],
                password.as_deref(),
            )
            .await?;
        }
    }
    Ok(kind)
}

/// Tables of the store at `pool` that hold rows, except portshift's bookkeeping.
async fn tables_with_rows(pool: &AnyPool, sqlite: bool) -> Result<Vec<String>, BackupError> {
    let names_sql = if sqlite {
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    } else {
        "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    };
    let names: Vec<String> = sqlx::query(names_sql)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let mut full = Vec::new();
    for name in names {
        // The migration ledger and the console's generated salt are not data.
        if name == "_sqlx_migrations" || name == "console_settings" {
            continue;
        }
        if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        let row = sqlx::query(&format!("SELECT 1 FROM {name} LIMIT 1"))
            .fetch_optional(pool)
            .await?;
        if row.is_some() {
            full.push(name);
        }
    }
    full.sort();
    Ok(full)
}

async fn refuse_unless_empty(url: &str, sqlite: bool) -> Result<(), BackupError> {
    sqlx::any::install_default_drivers();
    crate::tls::install_crypto_provider();
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .map_err(|source| {
            BackupError::Store(StoreError::Connect {
                url: redact_url(url),
                source,
            })
        })?;
    let full = tables_with_rows(&pool, sqlite).await;
    pool.close().await;
    let full = full?;
    if full.is_empty() {
        Ok(())
    } else {
        Err(BackupError::NotEmpty {
            url: redact_url(url),
            tables: format!("rows in {}", full.join(", ")),
        })
    }
}

/// Restores the backup `from` into the store at `url`, which must be empty (a new
/// database, or one holding only portshift's empty tables). Stop every server and
/// worker of that store first. Migrations newer than the backup run afterwards.
pub async fn restore(url: &str, from: &Path, tools: &PgTools) -> Result<(), BackupError> {
    let wanted = BackupKind::of_url(url)?;
    let found = BackupKind::of_file(from)?;
    if wanted != found {
        return Err(BackupError::WrongKind {
            path: from.display().to_string(),
            found: found.name(),
            wanted: wanted.name(),
            url: redact_url(url),
        });
    }
    match wanted {
        BackupKind::Sqlite => {
            let path = sqlite_path(url)?;
            if path.exists() {
                refuse_unless_empty(&format!("sqlite://{}?mode=ro", path.display()), true).await?;
            }
            let io = |what: &'static str, p: &Path| {
                let path = p.display().to_string();
                move |source| BackupError::Io { what, path, source }
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io("could not create the folder", dir))?;
            }
            // Copy beside the target, then rename over it: the store is never half
            // written. The empty store's WAL files go, or SQLite would replay them.
            let staging = path.with_extension("restoring");
            std::fs::copy(from, &staging).map_err(io("could not copy the backup to", &staging))?;
            for suffix in ["-wal", "-shm"] {
                let side = PathBuf::from(format!("{}{suffix}", path.display()));
                match std::fs::remove_file(&side) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(io("could not remove", &side)(e));
                    }
                    _ => {}
                }
            }
            std::fs::rename(&staging, &path).map_err(io("could not move the backup to", &path))?;
        }
        BackupKind::Postgres => {
            refuse_unless_empty(url, false).await?;
            let (libpq, password) = libpq_url(url)?;
            run_tool(
                &tools.pg_restore,
                "--pg-restore",
                &[
                    // An empty store may already have portshift's (empty) tables.
                    "--clean".into(),
                    "--if-exists".into(),
                    "--no-owner".into(),
                    "--no-privileges".into(),
                    "--single-transaction".into(),
                    "--exit-on-error".into(),
                    format!("--dbname={libpq}"),
                    from.display().to_string(),
                ],
                password.as_deref(),
            )
            .await?;
        }
    }
    // Brings the restored store up to this portshift's migrations.
    JobStore::connect(url).await?.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url() {
        let (u, p) =
            libpq_url("postgres://ps:s%40cret@db.example:5432/jobs?sslmode=verify-full").unwrap();
        assert_eq!(u, "postgres://ps@db.example:5432/jobs?sslmode=verify-full");
        assert_eq!(p.as_deref(), Some("s@cret"));
        let (u, p) = libpq_url("postgres://ps@db/jobs").unwrap();
        assert_eq!((u.as_str(), p), ("postgres://ps@db/jobs", None));
    }

    #[test]
    fn sqlite_paths() {
        assert_eq!(
            sqlite_path("sqlite:///var/lib/p/x.sqlite3?mode=rwc").unwrap(),
            PathBuf::from("/var/lib/p/x.sqlite3")
        );
        assert!(sqlite_path("sqlite::memory:").is_err());
    }
}
