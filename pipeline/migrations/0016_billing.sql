-- Billing through Stripe (pipeline/src/billing.rs). No card data: Stripe's hosted pages
-- take the card; these rows hold only Stripe's ids and what verified webhooks said.

-- Which Stripe customer pays for an organisation, and its subscription as the last
-- applied webhook described it (organisations.billing_plan holds the plan itself).
CREATE TABLE IF NOT EXISTS billing_accounts (
    org_id              TEXT PRIMARY KEY,
    customer_id         TEXT NOT NULL UNIQUE,
    subscription_id     TEXT,
    subscription_status TEXT,
    last_event_s        BIGINT NOT NULL DEFAULT 0,
    updated_ms          BIGINT NOT NULL
);

-- Stripe webhook events already applied: a replayed event id is not applied again.
CREATE TABLE IF NOT EXISTS billing_events (
    event_id    TEXT PRIMARY KEY,
    org_id      TEXT,
    event_type  TEXT NOT NULL,
    received_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS billing_events_by_time ON billing_events (received_ms);

-- Exports started per organisation and calendar month (UTC), counted against the plan.
-- Kept apart from the jobs: retention deletes jobs sooner than a month ends.
CREATE TABLE IF NOT EXISTS billing_usage (
    org_id  TEXT NOT NULL,
    month   TEXT NOT NULL,
    exports BIGINT NOT NULL,
    PRIMARY KEY (org_id, month)
);
