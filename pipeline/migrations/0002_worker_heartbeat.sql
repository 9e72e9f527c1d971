-- Workers stamp their job every few seconds; a running job whose stamp is stale has
-- lost its worker (and with it the credentials): it waits in needs_credentials.
ALTER TABLE jobs ADD COLUMN heartbeat_ms BIGINT;
