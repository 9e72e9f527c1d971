//! Console persistence: users, organisations and their members' roles, invitations,
//! sessions, the audit trail, rate-limit counters and the organisation's job history.
//! It shares the job store's database (SQLite or PostgreSQL, migration
//! `0004_console.sql`) and holds no secrets in the clear: passwords arrive here already
//! hashed (argon2id, by the console), sessions are stored as the SHA-256 of their token,
//! rate limits are keyed by a salted SHA-256 of the client IP, one-time e-mail links are
//! stored as the SHA-256 of their token.
//!
//! It also owns what the e-mail address may grant: an account counts as the owner of its
//! address only once verified, an invitation becomes a membership only when such an
//! owner accepts it, and erasing an account leaves a pseudonym where audit rows and job
//! records must outlive the person.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row};

use crate::store::{Bound, DAY_MS, JobStore, delete_some, is_unique_violation, now_ms};
use crate::{JobId, JobStatus};

/// An organisation's retention period unless its admins choose another (the purge
/// in `retention` applies it).
pub const DEFAULT_RETENTION_DAYS: i64 = 14;

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("account store query failed: {0}. Check that the database is reachable")]
    Query(#[from] sqlx::Error),
    #[error("an account with this e-mail address already exists: sign in instead")]
    EmailTaken,
    #[error("the account store holds a record portshift cannot read: {0}")]
    Corrupt(String),
    #[error(
        "you are the last owner of {}: make another member an owner, or delete the organisation, first",
        .0.join(", ")
    )]
    LastOwner(Vec<String>),
}

/// How long an invitation can be accepted.
pub const INVITATION_DAYS: i64 = 14;

/// What a one-time e-mail link is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenPurpose {
    /// Confirms the address of a new account.
    Verify,
    /// Sets a new password.
    Reset,
}

impl TokenPurpose {
    fn as_str(self) -> &'static str {
        match self {
            TokenPurpose::Verify => "verify",
            TokenPurpose::Reset => "reset",
        }
    }
}

/// An invitation as its addressee sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyInvitation {
    pub org_id: String,
    pub org_name: String,
    pub role: Role,
    pub invited_by: String,
    pub created_ms: i64,
}

/// The pseudonym that replaces an erased account's e-mail address where a record must
/// outlive it (audit rows, jobs it started, invitations it sent). Derived from the
/// account's random id, never from the address, so it cannot be recomputed from a
/// guessed address; the same person keeps one pseudonym across rows.
pub fn pseudonym(user_id: &str) -> String {
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(format!("portshift-erased|{user_id}")));
    format!("erased-user-{}", &h[..12])
}

/// A member's role in an organisation. What each role may do is decided by the console's
/// permission table; this is only what is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Owner, Role::Admin, Role::Member];
}

word_enum!(Role, "role", {
    Owner => "owner",
    Admin => "admin",
    Member => "member",
});

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub email: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Organisation {
    pub id: String,
    pub name: String,
    pub retention_days: i64,
    pub billing_plan: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub user: User,
    pub role: Role,
    pub since_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invitation {
    pub email: String,
    pub role: Role,
    pub invited_by: String,
    pub created_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub user: User,
    pub csrf_token: String,
    pub expires_ms: i64,
    /// The user proved they own their e-mail address.
    pub email_verified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    pub actor: String,
    pub action: String,
    pub detail: String,
    pub at_ms: i64,
}

/// One row of the job history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    pub id: JobId,
    pub started_by: String,
    pub created_ms: i64,
    pub finished_ms: Option<i64>,
    pub status: JobStatus,
    pub files: u64,
    pub bytes: u64,
}

/// What the rate limiter decided for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateDecision {
    Allowed { remaining: u64 },
    Refused { retry_after_s: u64 },
}

/// How long a rate-limit row outlives the start of its window: longer than any window
/// the console uses, so deleting older rows never resets a live count.
pub const RATE_LIMIT_ROWS_KEPT_MS: i64 = 24 * 3600 * 1000;

#[derive(Clone, Debug)]
pub struct Accounts {
    pool: AnyPool,
}

fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

fn role_of_row(row: &AnyRow, col: &str) -> Result<Role, AccountsError> {
    let s: String = row.try_get(col)?;
    s.parse().map_err(AccountsError::Corrupt)
}

fn org_of_row(row: &AnyRow) -> Result<Organisation, AccountsError> {
    Ok(Organisation {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        retention_days: row.try_get("retention_days")?,
        billing_plan: row.try_get("billing_plan")?,
    })
}

impl Accounts {
    /// Uses the job store's database (its migrations include the console's tables).
    pub fn new(store: &JobStore) -> Self {
        Self {
            pool: store.pool.clone(),
        }
    }

    // --- users -----------------------------------------------------------------

    /// Creates a user whose address the caller vouches for (the operator's tools and
    /// tests). `email` must already be normalised (trimmed, lower-case). Sign-up uses
    /// [`Accounts::register`] instead.
    pub async fn create_user(
        &self,
        email: &str,
        password_hash: &str,
    ) -> Result<User, AccountsError> {
        self.insert_user(email, password_hash, Some(now_ms())).await
    }

    /// Creates a user whose address is not yet proven (sign-up): it can act in no
    /// organisation until [`Accounts::mark_verified`].
    pub async fn register(&self, email: &str, password_hash: &str) -> Result<User, AccountsError> {
        self.insert_user(email, password_hash, None).await
    }

    async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
        verified_ms: Option<i64>,
    ) -> Result<User, AccountsError> {
        let id = new_id();
        let done = sqlx::query(
            "INSERT INTO users (id, email, password_hash, created_ms, email_verified_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&id)
        .bind(email)
        .bind(password_hash)
        .bind(now_ms())
        .bind(verified_ms)
        .execute(&self.pool)
        .await;
        match done {
            Ok(_) => Ok(User {
                id,
                email: email.to_string(),
            }),
            Err(e) if is_unique_violation(&e) => Err(AccountsError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// The user and their password hash.
    pub async fn user_by_email(
        &self,
        email: &str,
    ) -> Result<Option<(User, String)>, AccountsError> {
        let row = sqlx::query("SELECT id, email, password_hash FROM users WHERE email = $1")
            .bind(email)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok((
                User {
                    id: r.try_get("id")?,
                    email: r.try_get("email")?,
                },
                r.try_get("password_hash")?,
            ))
        })
        .transpose()
    }

    /// The user, their password hash and whether their address is verified.
    pub async fn user_by_id(
        &self,
        id: &str,
    ) -> Result<Option<(User, String, bool)>, AccountsError> {
        let row = sqlx::query(
            "SELECT id, email, password_hash, email_verified_ms FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let verified: Option<i64> = r.try_get("email_verified_ms")?;
            Ok((
                User {
                    id: r.try_get("id")?,
                    email: r.try_get("email")?,
                },
                r.try_get("password_hash")?,
                verified.is_some(),
            ))
        })
        .transpose()
    }

    pub async fn mark_verified(&self, user_id: &str) -> Result<(), AccountsError> {
        sqlx::query(
            "UPDATE users SET email_verified_ms = $1 WHERE id = $2 AND email_verified_ms IS NULL",
        )
        .bind(now_ms())
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_password(
        &self,
        user_id: &str,
        password_hash: &str,
    ) -> Result<(), AccountsError> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2")
            .bind(password_hash)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    // --- one-time e-mail links ------------------------------------------------------------

    /// Stores a link's token hash; earlier links of the same purpose stop working.
    pub async fn create_email_token(
        &self,
        token_sha256: &str,
        user_id: &str,
        purpose: TokenPurpose,
        expires_ms: i64,
    ) -> Result<(), AccountsError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM email_tokens WHERE user_id = $1 AND purpose = $2")
            .bind(user_id)
            .bind(purpose.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO email_tokens (token_sha256, user_id, purpose, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_sha256)
        .bind(user_id)
        .bind(purpose.as_str())
        .bind(now_ms())
        .bind(expires_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The user a live link belongs to, without using it up.
    pub async fn peek_email_token(
        &self,
        token_sha256: &str,
        purpose: TokenPurpose,
    ) -> Result<Option<String>, AccountsError> {
        self.live_email_token(
            "SELECT user_id FROM email_tokens WHERE token_sha256 = $1 AND purpose = $2 AND expires_ms > $3",
            token_sha256,
            purpose,
        )
        .await
    }

    /// Uses a live link up: returns its user only to the one caller that deleted it, so
    /// two requests racing with the same link cannot both succeed.
    pub async fn take_email_token(
        &self,
        token_sha256: &str,
        purpose: TokenPurpose,
    ) -> Result<Option<String>, AccountsError> {
        self.live_email_token(
            "DELETE FROM email_tokens WHERE token_sha256 = $1 AND purpose = $2 AND expires_ms > $3 RETURNING user_id",
            token_sha256,
            purpose,
        )
        .await
    }

    /// Runs `sql` (a SELECT or a DELETE .. RETURNING of `user_id`, bound to the token's
    /// hash, its purpose and now) and returns the user of the live link it found.
    async fn live_email_token(
        &self,
        sql: &'static str,
        token_sha256: &str,
        purpose: TokenPurpose,
    ) -> Result<Option<String>, AccountsError> {
        let row = sqlx::query(sql)
            .bind(token_sha256)
            .bind(purpose.as_str())
            .bind(now_ms())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("user_id")?)).transpose()
    }

    // --- organisations -------------------------------------------------------------

    /// Creates an organisation with `owner` as its first owner.
    pub async fn create_org(
        &self,
        name: &str,
        owner: &User,
    ) -> Result<Organisation, AccountsError> {
        let id = new_id();
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO organisations (id, name, retention_days, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(name)
        .bind(DEFAULT_RETENTION_DAYS)
        .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO memberships (org_id, user_id, role, created_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(&id)
        .bind(&owner.id)
        .bind(Role::Owner.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Organisation {
            id,
            name: name.to_string(),
            retention_days: DEFAULT_RETENTION_DAYS,
            billing_plan: "trial".into(),
        })
    }

    pub async fn org(&self, id: &str) -> Result<Option<Organisation>, AccountsError> {
        let row = sqlx::query(
            "SELECT id, name, retention_days, billing_plan FROM organisations WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(org_of_row).transpose()
    }

    /// The organisations a user belongs to, with their role, by name.
    pub async fn orgs_of(&self, user_id: &str) -> Result<Vec<(Organisation, Role)>, AccountsError> {
        let rows = sqlx::query(
            "SELECT o.id, o.name, o.retention_days, o.billing_plan, m.role FROM organisations o \
             JOIN memberships m ON m.org_id = o.id WHERE m.user_id = $1 ORDER BY o.name, o.id",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((org_of_row(r)?, role_of_row(r, "role")?)))
            .collect()
    }

    pub async fn role_of(
        &self,
        org_id: &str,
        user_id: &str,
    ) -> Result<Option<Role>, AccountsError> {
        let row = sqlx::query("SELECT role FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(|r| role_of_row(r, "role")).transpose()
    }

    pub async fn members(&self, org_id: &str) -> Result<Vec<Member>, AccountsError> {
        let rows = sqlx::query(
            "SELECT u.id, u.email, m.role, m.created_ms FROM memberships m JOIN users u ON u.id = m.user_id \
             WHERE m.org_id = $1 ORDER BY u.email",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Member {
                    user: User {
                        id: r.try_get("id")?,
                        email: r.try_get("email")?,
                    },
                    role: role_of_row(r, "role")?,
                    since_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Adds a member, or changes the role of an existing one.
    pub async fn set_role(
        &self,
        org_id: &str,
        user_id: &str,
        role: Role,
    ) -> Result<(), AccountsError> {
        sqlx::query(
            "INSERT INTO memberships (org_id, user_id, role, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .bind(org_id)
        .bind(user_id)
        .bind(role.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_member(&self, org_id: &str, user_id: &str) -> Result<bool, AccountsError> {
        let done = sqlx::query("DELETE FROM memberships WHERE org_id = $1 AND user_id = $2")
            .bind(org_id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn owner_count(&self, org_id: &str) -> Result<i64, AccountsError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM memberships WHERE org_id = $1 AND role = 'owner'",
        )
        .bind(org_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Records an invitation of an address. Nobody becomes a member here, whether or not
    /// the address has an account: the invitation waits until a verified owner of the
    /// address accepts it ([`Accounts::accept_invitation`]). Inviting again renews it.
    pub async fn invite(
        &self,
        org_id: &str,
        email: &str,
        role: Role,
        invited_by: &str,
    ) -> Result<(), AccountsError> {
        sqlx::query(
            "INSERT INTO invitations (org_id, email, role, invited_by, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (org_id, email) DO UPDATE SET role = excluded.role, invited_by = excluded.invited_by, \
             created_ms = excluded.created_ms",
        )
        .bind(org_id)
        .bind(email)
        .bind(role.as_str())
        .bind(invited_by)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn invitations(&self, org_id: &str) -> Result<Vec<Invitation>, AccountsError> {
        let rows = sqlx::query(
            "SELECT email, role, invited_by, created_ms FROM invitations WHERE org_id = $1 ORDER BY email",
        )
        .bind(org_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Invitation {
                    email: r.try_get("email")?,
                    role: role_of_row(r, "role")?,
                    invited_by: r.try_get("invited_by")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// The live invitations addressed to `email`, newest first. Callers show them only
    /// to a verified owner of the address.
    pub async fn invitations_for(&self, email: &str) -> Result<Vec<MyInvitation>, AccountsError> {
        let rows = sqlx::query(
            "SELECT i.org_id, o.name, i.role, i.invited_by, i.created_ms FROM invitations i \
             JOIN organisations o ON o.id = i.org_id WHERE i.email = $1 AND i.created_ms > $2 \
             ORDER BY i.created_ms DESC, o.name",
        )
        .bind(email)
        .bind(now_ms() - INVITATION_DAYS * 24 * 3600 * 1000)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(MyInvitation {
                    org_id: r.try_get("org_id")?,
                    org_name: r.try_get("name")?,
                    role: role_of_row(r, "role")?,
                    invited_by: r.try_get("invited_by")?,
                    created_ms: r.try_get("created_ms")?,
                })
            })
            .collect()
    }

    /// Accepts the live invitation of `user`'s address to `org_id`: the caller must have
    /// checked that the address is verified. A member already in the organisation keeps
    /// their role (an invitation never changes one). Returns the role held afterwards, or
    /// None when there is no such invitation.
    pub async fn accept_invitation(
        &self,
        user: &User,
        org_id: &str,
    ) -> Result<Option<Role>, AccountsError> {
        let taken = sqlx::query(
            "DELETE FROM invitations WHERE org_id = $1 AND email = $2 AND created_ms > $3 RETURNING role",
        )
        .bind(org_id)
        .bind(&user.email)
        .bind(now_ms() - INVITATION_DAYS * 24 * 3600 * 1000)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = taken else { return Ok(None) };
        let invited = role_of_row(&row, "role")?;
        if let Some(have) = self.role_of(org_id, &user.id).await? {
            return Ok(Some(have));
        }
        sqlx::query(
            "INSERT INTO memberships (org_id, user_id, role, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (org_id, user_id) DO NOTHING",
        )
        .bind(org_id)
        .bind(&user.id)
        .bind(invited.as_str())
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        self.role_of(org_id, &user.id).await
    }

    /// Declines (deletes) the invitation of `email` to `org_id`; true if there was one.
    pub async fn decline_invitation(
        &self,
        email: &str,
        org_id: &str,
    ) -> Result<bool, AccountsError> {
        let done = sqlx::query("DELETE FROM invitations WHERE org_id = $1 AND email = $2")
            .bind(org_id)
            .bind(email)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_retention(&self, org_id: &str, days: i64) -> Result<(), AccountsError> {
        sqlx::query("UPDATE organisations SET retention_days = $1 WHERE id = $2")
            .bind(days)
            .bind(org_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes the organisation and everything it owns, in one transaction: its jobs with
    /// every row keyed by them, its schedules with their runs and exported-recording
    /// rows, memberships, invitations, audit events, billing rows (Stripe link, applied
    /// webhook events, usage) and its AWS ExternalId. Nothing of it stays in the store
    /// (the erasure test checks every table). Its members' accounts stay: each may
    /// belong to other organisations, and deletes their own account.
    ///
    /// The caller stops the jobs' workers and purges their JetStream messages first;
    /// worker logs of jobs that no longer exist are swept by the purge loop.
    pub async fn delete_org(&self, org_id: &str) -> Result<(), AccountsError> {
        let mut tx = self.pool.begin().await?;
        // Each owner deletes its own rows; schedule runs name jobs, so they go first.
        crate::schedules::delete_schedules_of_org(&mut tx, org_id).await?;
        crate::store::delete_jobs_of_org(&mut tx, org_id).await?;
        crate::billing::delete_billing_of_org(&mut tx, org_id).await?;
        for sql in [
            "DELETE FROM memberships WHERE org_id = $1",
            "DELETE FROM invitations WHERE org_id = $1",
            "DELETE FROM audit_events WHERE org_id = $1",
            "DELETE FROM console_settings WHERE name = 'aws_external_id:' || $1",
            "DELETE FROM organisations WHERE id = $1",
        ] {
            sqlx::query(sql).bind(org_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.checkpoint_sqlite().await?;
        Ok(())
    }

    /// The ids of an organisation's jobs (to stop their workers and purge their queue
    /// messages before [`Accounts::delete_org`]).
    pub async fn org_jobs(&self, org_id: &str) -> Result<Vec<JobId>, AccountsError> {
        let rows = sqlx::query("SELECT id FROM jobs WHERE organisation = $1")
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::new();
        for r in rows {
            let id: String = r.try_get(0)?;
            out.push(
                id.parse()
                    .map_err(|_| AccountsError::Corrupt(format!("job id {id:?}")))?,
            );
        }
        Ok(out)
    }

    // --- sessions ------------------------------------------------------------------

    pub async fn create_session(
        &self,
        token_sha256: &str,
        user_id: &str,
        csrf_token: &str,
        expires_ms: i64,
    ) -> Result<(), AccountsError> {
        sqlx::query(
            "INSERT INTO sessions (token_sha256, user_id, csrf_token, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_sha256)
        .bind(user_id)
        .bind(csrf_token)
        .bind(now_ms())
        .bind(expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The live session with this token hash, if any (expired sessions are removed).
    pub async fn session(&self, token_sha256: &str) -> Result<Option<Session>, AccountsError> {
        let row = sqlx::query(
            "SELECT u.id, u.email, u.email_verified_ms, s.csrf_token, s.expires_ms FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        let expires_ms: i64 = r.try_get("expires_ms")?;
        if expires_ms <= now_ms() {
            self.delete_session(token_sha256).await?;
            return Ok(None);
        }
        Ok(Some(Session {
            user: User {
                id: r.try_get("id")?,
                email: r.try_get("email")?,
            },
            csrf_token: r.try_get("csrf_token")?,
            expires_ms,
            email_verified: r.try_get::<Option<i64>, _>("email_verified_ms")?.is_some(),
        }))
    }

    pub async fn delete_session(&self, token_sha256: &str) -> Result<(), AccountsError> {
        sqlx::query("DELETE FROM sessions WHERE token_sha256 = $1")
            .bind(token_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Signs a user out everywhere; returns how many sessions ended.
    pub async fn delete_sessions_of(&self, user_id: &str) -> Result<u64, AccountsError> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Ends every session of a user but one (after a password change, the device that
    /// changed it stays signed in); returns how many ended.
    pub async fn delete_other_sessions(
        &self,
        user_id: &str,
        keep_token_sha256: &str,
    ) -> Result<u64, AccountsError> {
        let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1 AND token_sha256 <> $2")
            .bind(user_id)
            .bind(keep_token_sha256)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    // --- erasure and access ------------------------------------------------------------

    /// Everything held about a user, as one JSON document (the right of access): the
    /// account, memberships, sessions (times only), invitations to and from the address,
    /// the audit events naming the address, and the jobs the user started.
    pub async fn personal_data(&self, user_id: &str) -> Result<serde_json::Value, AccountsError> {
        use serde_json::json;
        let Some(u) =
            sqlx::query("SELECT id, email, created_ms, email_verified_ms FROM users WHERE id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(json!(null));
        };
        let email: String = u.try_get("email")?;
        let orgs = self.orgs_of(user_id).await?;
        let sessions = sqlx::query(
            "SELECT created_ms, expires_ms FROM sessions WHERE user_id = $1 ORDER BY created_ms",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        let invitations = sqlx::query(
            "SELECT org_id, email, role, invited_by, created_ms FROM invitations \
             WHERE email = $1 OR invited_by = $1 ORDER BY created_ms",
        )
        .bind(&email)
        .fetch_all(&self.pool)
        .await?;
        let audit = sqlx::query(
            "SELECT org_id, actor, action, detail, at_ms FROM audit_events \
             WHERE actor = $1 OR detail LIKE '%' || $1 || '%' ORDER BY at_ms, id",
        )
        .bind(&email)
        .fetch_all(&self.pool)
        .await?;
        let jobs = sqlx::query(
            "SELECT id, organisation, created_ms, finished_ms, status FROM jobs \
             WHERE started_by = $1 ORDER BY created_ms",
        )
        .bind(&email)
        .fetch_all(&self.pool)
        .await?;
        let mut sessions_json = Vec::new();
        for r in &sessions {
            sessions_json.push(json!({
                "created_ms": r.try_get::<i64, _>("created_ms")?,
                "expires_ms": r.try_get::<i64, _>("expires_ms")?,
            }));
        }
        let mut invitations_json = Vec::new();
        for r in &invitations {
            invitations_json.push(json!({
                "organisation": r.try_get::<String, _>("org_id")?,
                "email": r.try_get::<String, _>("email")?,
                "role": r.try_get::<String, _>("role")?,
                "invited_by": r.try_get::<String, _>("invited_by")?,
                "created_ms": r.try_get::<i64, _>("created_ms")?,
            }));
        }
        let mut audit_json = Vec::new();
        for r in &audit {
            audit_json.push(json!({
                "organisation": r.try_get::<String, _>("org_id")?,
                "actor": r.try_get::<String, _>("actor")?,
                "action": r.try_get::<String, _>("action")?,
                "detail": r.try_get::<String, _>("detail")?,
                "at_ms": r.try_get::<i64, _>("at_ms")?,
            }));
        }
        let mut jobs_json = Vec::new();
        for r in &jobs {
            jobs_json.push(json!({
                "id": r.try_get::<String, _>("id")?,
                "organisation": r.try_get::<String, _>("organisation")?,
                "created_ms": r.try_get::<i64, _>("created_ms")?,
                "finished_ms": r.try_get::<Option<i64>, _>("finished_ms")?,
                "status": r.try_get::<String, _>("status")?,
            }));
        }
        Ok(json!({
            "account": {
                "id": u.try_get::<String, _>("id")?,
                "email": email,
                "created_ms": u.try_get::<i64, _>("created_ms")?,
                "email_verified_ms": u.try_get::<Option<i64>, _>("email_verified_ms")?,
                "password": "stored only as an argon2id hash, not included",
            },
            "memberships": orgs.iter().map(|(o, r)| json!({"organisation": o.id, "name": o.name, "role": r.as_str()})).collect::<Vec<_>>(),
            "sessions": sessions_json,
            "invitations": invitations_json,
            "audit_events": audit_json,
            "jobs_started": jobs_json,
        }))
    }

    /// Erases a user. Refused while they are the last owner of an organisation. Their
    /// account, sessions, links, memberships and the invitations addressed to them are
    /// deleted; where a record must outlive them (audit rows, the jobs they started,
    /// invitations they sent) their address is replaced by [`pseudonym`]. On SQLite the
    /// write-ahead log is then checkpointed and truncated, and deleted rows are zeroed
    /// (`secure_delete`), so the address leaves no bytes in the database files.
    pub async fn delete_user(&self, user_id: &str) -> Result<(), AccountsError> {
        let Some((user, _, _)) = self.user_by_id(user_id).await? else {
            return Ok(());
        };
        let mut sole = Vec::new();
        for (org, role) in self.orgs_of(user_id).await? {
            if role == Role::Owner && self.owner_count(&org.id).await? <= 1 {
                sole.push(org.name);
            }
        }
        if !sole.is_empty() {
            return Err(AccountsError::LastOwner(sole));
        }
        let alias = pseudonym(user_id);
        let orgs: Vec<String> = self
            .orgs_of(user_id)
            .await?
            .into_iter()
            .map(|(o, _)| o.id)
            .collect();
        let mut tx = self.pool.begin().await?;
        for sql in [
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM email_tokens WHERE user_id = $1",
            "DELETE FROM memberships WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(user_id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM invitations WHERE email = $1")
            .bind(&user.email)
            .execute(&mut *tx)
            .await?;
        for sql in [
            "UPDATE invitations SET invited_by = $2 WHERE invited_by = $1",
            "UPDATE audit_events SET actor = $2 WHERE actor = $1",
            "UPDATE audit_events SET detail = REPLACE(detail, $1, $2) WHERE detail LIKE '%' || $1 || '%'",
            "UPDATE jobs SET started_by = $2 WHERE started_by = $1",
        ] {
            sqlx::query(sql)
                .bind(&user.email)
                .bind(&alias)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let now = now_ms();
        for org in &orgs {
            sqlx::query(
                "INSERT INTO audit_events (id, org_id, actor, action, detail, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new_id())
            .bind(org)
            .bind(&alias)
            .bind("account.deleted")
            .bind("the member deleted their account")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.checkpoint_sqlite().await?;
        Ok(())
    }

    /// On SQLite, copies the write-ahead log back into the database and empties it, so
    /// erased rows leave no older page copies there (deleted rows themselves are zeroed:
    /// the store opens SQLite with `secure_delete`). PostgreSQL: nothing here, see
    /// docs/security.md for what it keeps and for how long.
    async fn checkpoint_sqlite(&self) -> Result<(), AccountsError> {
        if self.pool.connect_options().database_url.scheme() == "sqlite" {
            // Older copies of the changed pages live in the WAL until a checkpoint;
            // TRUNCATE copies them back (zeroed) and empties the WAL file.
            // A reader holding an old snapshot makes it report busy: wait a little.
            for _ in 0..50 {
                let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&self.pool)
                    .await?;
                let busy: i64 = row.try_get(0)?;
                if busy == 0 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    // --- audit trail -----------------------------------------------------------------

    pub async fn audit(
        &self,
        org_id: &str,
        actor: &str,
        action: &str,
        detail: &str,
    ) -> Result<(), AccountsError> {
        sqlx::query(
            "INSERT INTO audit_events (id, org_id, actor, action, detail, at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(new_id())
        .bind(org_id)
        .bind(actor)
        .bind(action)
        .bind(detail)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The newest `limit` events of an organisation, newest first.
    pub async fn audit_log(
        &self,
        org_id: &str,
        limit: i64,
    ) -> Result<Vec<AuditEvent>, AccountsError> {
        let rows = sqlx::query(
            "SELECT actor, action, detail, at_ms FROM audit_events WHERE org_id = $1 \
             ORDER BY at_ms DESC, id DESC LIMIT $2",
        )
        .bind(org_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEvent {
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    detail: r.try_get("detail")?,
                    at_ms: r.try_get("at_ms")?,
                })
            })
            .collect()
    }

    // --- rate limits ---------------------------------------------------------------------

    /// The installation's salt for hashing client addresses (created on first use).
    pub async fn ip_salt(&self) -> Result<String, AccountsError> {
        let fresh = hex::encode(uuid::Uuid::new_v4().as_bytes())
            + &hex::encode(uuid::Uuid::new_v4().as_bytes());
        sqlx::query(
            "INSERT INTO console_settings (name, value) VALUES ('ip_salt', $1) ON CONFLICT (name) DO NOTHING",
        )
        .bind(fresh)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT value FROM console_settings WHERE name = 'ip_salt'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("value")?)
    }

    /// Counts one hit of `key_sha256` in a fixed window of `window_ms`; refuses once the
    /// window already holds `limit` hits.
    pub async fn hit(
        &self,
        key_sha256: &str,
        bucket: &str,
        window_ms: i64,
        limit: u64,
    ) -> Result<RateDecision, AccountsError> {
        let now = now_ms();
        let window = now - now.rem_euclid(window_ms);
        let row = sqlx::query(
            "INSERT INTO rate_limits (key_sha256, bucket, window_ms, hits) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (key_sha256, bucket) DO UPDATE SET \
               hits = CASE WHEN rate_limits.window_ms = excluded.window_ms THEN rate_limits.hits + 1 ELSE 1 END, \
               window_ms = excluded.window_ms \
             RETURNING hits",
        )
        .bind(key_sha256)
        .bind(bucket)
        .bind(window)
        .fetch_one(&self.pool)
        .await?;
        let hits: i64 = row.try_get("hits")?;
        let hits = hits.max(0) as u64;
        if hits > limit {
            let retry_after_ms = (window + window_ms - now).max(1000);
            Ok(RateDecision::Refused {
                retry_after_s: (retry_after_ms as u64).div_ceil(1000),
            })
        } else {
            Ok(RateDecision::Allowed {
                remaining: limit - hits,
            })
        }
    }

    /// Deletes every counter of one rate-limit key (an erased user's own).
    pub async fn delete_rate_limit_key(&self, key_sha256: &str) -> Result<(), AccountsError> {
        sqlx::query("DELETE FROM rate_limits WHERE key_sha256 = $1")
            .bind(key_sha256)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every stored rate-limit key (for tests and audits: they must all be hashes).
    pub async fn rate_limit_keys(&self) -> Result<Vec<String>, AccountsError> {
        let rows = sqlx::query("SELECT key_sha256 FROM rate_limits ORDER BY key_sha256")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("key_sha256")?)).collect()
    }

    // --- job history ------------------------------------------------------------------------

    /// One page of the organisation's jobs, newest first, and how many match in all.
    pub async fn job_history(
        &self,
        org_id: &str,
        status: Option<JobStatus>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<JobSummary>, i64), AccountsError> {
        let filter = if status.is_some() {
            "AND j.status = $4"
        } else {
            ""
        };
        let sql = format!(
            "SELECT j.id, j.started_by, j.created_ms, j.finished_ms, j.status, \
             (SELECT COUNT(*) FROM files f WHERE f.job_id = j.id) AS files, \
             (SELECT CAST(COALESCE(SUM(f.bytes), 0) AS BIGINT) FROM files f WHERE f.job_id = j.id) AS bytes \
             FROM jobs j WHERE j.organisation = $1 {filter} \
             ORDER BY j.created_ms DESC, j.id DESC LIMIT $2 OFFSET $3"
        );
        let mut q = sqlx::query(&sql).bind(org_id).bind(limit).bind(offset);
        if let Some(s) = status {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        let jobs = rows
            .iter()
            .map(|r| {
                let id: String = r.try_get("id")?;
                let status: String = r.try_get("status")?;
                let files: i64 = r.try_get("files")?;
                let bytes: i64 = r.try_get("bytes")?;
                Ok(JobSummary {
                    id: id
                        .parse()
                        .map_err(|e| AccountsError::Corrupt(format!("{e}")))?,
                    started_by: r.try_get("started_by")?,
                    created_ms: r.try_get("created_ms")?,
                    finished_ms: r.try_get("finished_ms")?,
                    status: status.parse().map_err(AccountsError::Corrupt)?,
                    files: files.max(0) as u64,
                    bytes: bytes.max(0) as u64,
                })
            })
            .collect::<Result<Vec<_>, AccountsError>>()?;
        let count_sql = format!(
            "SELECT COUNT(*) AS n FROM jobs j WHERE j.organisation = $1 {}",
            if status.is_some() {
                "AND j.status = $2"
            } else {
                ""
            }
        );
        let mut q = sqlx::query(&count_sql).bind(org_id);
        if let Some(s) = status {
            q = q.bind(s.as_str());
        }
        let total: i64 = q.fetch_one(&self.pool).await?.try_get("n")?;
        Ok((jobs, total))
    }

    /// The organisation a job belongs to (the console checks it before showing a job).
    pub async fn job_organisation(&self, job: &JobId) -> Result<Option<String>, AccountsError> {
        let row = sqlx::query("SELECT organisation FROM jobs WHERE id = $1")
            .bind(job.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("organisation")?)).transpose()
    }

    /// Jobs by status across all organisations (for `/metrics`).
    pub async fn jobs_by_status(&self) -> Result<Vec<(String, i64)>, AccountsError> {
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("status")?, r.try_get("n")?)))
            .collect()
    }

    /// Store-derived per-stage totals across all jobs: recordings listed, recordings
    /// settled (fetch), files uploaded, manifests written, jobs notified (finished).
    pub async fn stage_totals(&self) -> Result<Vec<(&'static str, i64)>, AccountsError> {
        let one = |sql: &'static str| async move {
            let row = sqlx::query(sql).fetch_one(&self.pool).await?;
            Ok::<i64, AccountsError>(row.try_get("n")?)
        };
        Ok(vec![
            ("list", one("SELECT COUNT(*) AS n FROM recordings").await?),
            (
                "fetch",
                one("SELECT COUNT(*) AS n FROM recordings WHERE status <> 'pending'").await?,
            ),
            ("upload", one("SELECT COUNT(*) AS n FROM files").await?),
            (
                "manifest",
                one("SELECT COUNT(*) AS n FROM jobs WHERE manifest_key IS NOT NULL").await?,
            ),
            (
                "notify",
                one("SELECT COUNT(*) AS n FROM jobs WHERE status IN ('finished', 'finished_with_failures')").await?,
            ),
        ])
    }
    // --- retention ---------------------------------------------------------------------

    /// When the organisation's oldest kept job started (the settings page shows it).
    pub async fn oldest_job_ms(&self, org_id: &str) -> Result<Option<i64>, AccountsError> {
        let row = sqlx::query("SELECT MIN(created_ms) AS m FROM jobs WHERE organisation = $1")
            .bind(org_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("m")?)
    }

    /// Deletes up to `limit` sessions that expired before `now_ms`.
    pub async fn purge_expired_sessions(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<u64, AccountsError> {
        Ok(delete_some(
            &self.pool,
            "sessions",
            "expires_ms < $1",
            &[Bound::Int(now_ms)],
            limit,
        )
        .await?)
    }

    /// Deletes up to `limit` rate-limit rows whose window began more than
    /// [`RATE_LIMIT_ROWS_KEPT_MS`] before `now_ms` (every window is shorter, so such a
    /// row counts nothing any more).
    pub async fn purge_rate_limits(&self, now_ms: i64, limit: i64) -> Result<u64, AccountsError> {
        Ok(delete_some(
            &self.pool,
            "rate_limits",
            "window_ms < $1",
            &[Bound::Int(now_ms - RATE_LIMIT_ROWS_KEPT_MS)],
            limit,
        )
        .await?)
    }

    /// Deletes up to `limit` audit events older than `days` at `now_ms`.
    pub async fn purge_audit_events(
        &self,
        now_ms: i64,
        days: i64,
        limit: i64,
    ) -> Result<u64, AccountsError> {
        Ok(delete_some(
            &self.pool,
            "audit_events",
            "at_ms < $1",
            &[Bound::Int(now_ms - days * DAY_MS)],
            limit,
        )
        .await?)
    }

    /// How many sessions, rate-limit rows and audit events are stored (for tests).
    pub async fn console_row_counts(&self) -> Result<(i64, i64, i64), AccountsError> {
        let one = |sql: &'static str| async move {
            let row = sqlx::query(sql).fetch_one(&self.pool).await?;
            Ok::<i64, AccountsError>(row.try_get("n")?)
        };
        Ok((
            one("SELECT COUNT(*) AS n FROM sessions").await?,
            one("SELECT COUNT(*) AS n FROM rate_limits").await?,
            one("SELECT COUNT(*) AS n FROM audit_events").await?,
        ))
    }
}
