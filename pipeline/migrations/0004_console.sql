-- The web console: accounts, organisations, roles, sessions, audit trail, rate limits.
-- Passwords are argon2id hashes; sessions are stored as the SHA-256 of their token; rate
-- limits are keyed by a salted SHA-256 of the client IP (raw IPs are never stored).
CREATE TABLE IF NOT EXISTS users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS organisations (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    retention_days BIGINT NOT NULL DEFAULT 90,
    billing_plan   TEXT NOT NULL DEFAULT 'trial',
    created_ms     BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS memberships (
    org_id     TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (org_id, user_id)
);
CREATE INDEX IF NOT EXISTS memberships_by_user ON memberships (user_id);

-- An invitation waits for its e-mail address to sign up; an existing user is added at once.
CREATE TABLE IF NOT EXISTS invitations (
    org_id     TEXT NOT NULL,
    email      TEXT NOT NULL,
    role       TEXT NOT NULL,
    invited_by TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (org_id, email)
);

CREATE TABLE IF NOT EXISTS sessions (
    token_sha256 TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    csrf_token   TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions (user_id);

CREATE TABLE IF NOT EXISTS audit_events (
    id       TEXT PRIMARY KEY,
    org_id   TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    detail   TEXT NOT NULL,
    at_ms    BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_org ON audit_events (org_id, at_ms);

CREATE TABLE IF NOT EXISTS rate_limits (
    key_sha256 TEXT NOT NULL,
    bucket     TEXT NOT NULL,
    window_ms  BIGINT NOT NULL,
    hits       BIGINT NOT NULL,
    PRIMARY KEY (key_sha256, bucket)
);

CREATE TABLE IF NOT EXISTS console_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Job history filtered by status.
CREATE INDEX IF NOT EXISTS jobs_by_org_status ON jobs (organisation, status, created_ms);
