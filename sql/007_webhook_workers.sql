-- Webhook worker processes (`waflow webhook-worker`) say here that they are alive and what
-- they have done; the app's /health and /stats read it, whichever instance answers.
CREATE TABLE webhook_workers (
    id                  text PRIMARY KEY,
    started_at          timestamptz NOT NULL DEFAULT now(),
    beat_at             timestamptz NOT NULL DEFAULT now(),
    loops               jsonb NOT NULL DEFAULT '{}',
    counters            jsonb NOT NULL DEFAULT '{}'
);
COMMENT ON TABLE webhook_workers IS 'One row per running webhook worker process: heartbeat, its loops alive, its counters.';

-- Workers LISTEN on this channel, so a stored event wakes them at once in any process.
CREATE FUNCTION webhook_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('webhook_inbox', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_inbox_notify AFTER INSERT ON webhook_inbox
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_inbox_notify();
