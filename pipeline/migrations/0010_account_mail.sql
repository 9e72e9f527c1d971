-- E-mail ownership and account self-service. An account's address counts only once its
-- owner proved it (email_verified_ms set): the sign-up link, or a password reset link.
-- Accounts made before this migration confirm their address once (the console offers
-- a new link); until then they can act in no organisation.
ALTER TABLE users ADD COLUMN email_verified_ms BIGINT;

-- One-time links sent by e-mail (purpose 'verify' or 'reset'), stored only as the
-- SHA-256 of the token; a link works once and until expires_ms.
CREATE TABLE IF NOT EXISTS email_tokens (
    token_sha256 TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    expires_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS email_tokens_by_user ON email_tokens (user_id, purpose);
