-- Consent with its history, circuit breakers on account-level errors, and campaign control
-- (pause, resume, cancel, retry of failed rows).

-- Consent: two facts per contact. `opted_out` covers every campaign message (STOP words, a
-- CSV, the API); `marketing_opted_out` covers marketing messages only (WhatsApp's
-- user_preferences, error 131050, the API). Each is a cache of the contact's newest
-- consent event of its scope, so events applied out of order still leave the newest fact.
ALTER TABLE contacts ADD COLUMN marketing_opted_out boolean NOT NULL DEFAULT false;
ALTER TABLE contacts ADD COLUMN marketing_opted_out_at timestamptz;

CREATE TABLE consent_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id          bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    scope               text NOT NULL CHECK (scope IN ('campaigns', 'marketing')),
    opted_out           boolean NOT NULL,
    source              text NOT NULL CHECK (source IN (
                            'keyword', 'user_preferences', 'error_131050', 'csv', 'api',
                            'operator', 'before_history')),
    actor               text,
    reason              text,
    -- The inbound message or the failed send behind the change (no foreign key: the
    -- message archive deletes old messages, and the history must outlive them).
    message_id          bigint,
    occurred_at         timestamptz NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consent_events_contact_idx ON consent_events (contact_id, scope, occurred_at DESC, id DESC);
-- WhatsApp redelivers webhooks: the same preference event is recorded once.
CREATE UNIQUE INDEX consent_events_webhook_once ON consent_events (contact_id, scope, opted_out, occurred_at)
    WHERE source = 'user_preferences';
COMMENT ON TABLE consent_events IS 'Every change of a contact''s consent: what, from which source, by whom, when.';

INSERT INTO consent_events (contact_id, scope, opted_out, source, reason, occurred_at)
SELECT id, 'campaigns', true, 'before_history', 'opted out before consent history was kept',
       COALESCE(opted_out_at, updated_at)
FROM contacts WHERE opted_out;

-- Messages: two more final statuses, the consent rules a campaign message follows (its
-- template's category when it was dispatched), and holds. A held row is `pending` with no
-- payload on the queue (`queued_at` NULL): its campaign is paused, or a circuit breaker on
-- its scope is open. The sender re-queues it once the hold is lifted.
ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN (
    'pending', 'sending', 'sent', 'delivered', 'read', 'failed', 'skipped', 'cancelled', 'received'));
ALTER TABLE messages ADD COLUMN category text CHECK (category IN ('marketing', 'utility', 'authentication'));
ALTER TABLE messages ADD COLUMN status_reason text;
ALTER TABLE messages ADD COLUMN skipped_at timestamptz;
ALTER TABLE messages ADD COLUMN cancelled_at timestamptz;
ALTER TABLE messages ADD COLUMN held_at timestamptz;
COMMENT ON COLUMN messages.category IS 'Consent rules of a campaign message: marketing skips both opt-outs, utility and authentication only the campaign one.';
COMMENT ON COLUMN messages.status_reason IS 'Why a row was skipped, cancelled or held.';

CREATE OR REPLACE FUNCTION message_status_rank(status text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'pending' THEN 0 WHEN 'sending' THEN 1 WHEN 'sent' THEN 2
        WHEN 'delivered' THEN 3 WHEN 'read' THEN 4 WHEN 'failed' THEN 5
        WHEN 'skipped' THEN 5 WHEN 'cancelled' THEN 5
        WHEN 'received' THEN 0 END
$$;

-- Circuit breakers: an error about the access token, the account, a phone number or a
-- template (not the recipient) opens one on its scope. While it is open nothing in the
-- scope is sent or failed: payloads are held here. Rate limits close by a successful probe
-- (with backoff); the rest when an operator resets them.
CREATE TABLE circuit_breakers (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope               text NOT NULL CHECK (scope IN ('app', 'account', 'phone_number', 'template')),
    scope_key           text NOT NULL,
    error_code          integer,
    error_title         text,
    closes_by           text NOT NULL CHECK (closes_by IN ('probe', 'operator')),
    opened_at           timestamptz NOT NULL DEFAULT now(),
    trips               integer NOT NULL DEFAULT 1 CHECK (trips > 0),
    probe_at            timestamptz,
    probe_message_id    bigint,
    probe_started_at    timestamptz,
    closed_at           timestamptz,
    closed_by           text,
    close_reason        text,
    CHECK ((closes_by = 'probe') = (probe_at IS NOT NULL))
);
CREATE UNIQUE INDEX circuit_breakers_one_open ON circuit_breakers (scope, scope_key) WHERE closed_at IS NULL;

ALTER TABLE messages ADD COLUMN breaker_id bigint REFERENCES circuit_breakers (id);
CREATE INDEX messages_held_idx ON messages (id) WHERE held_at IS NOT NULL;
CREATE INDEX messages_breaker_idx ON messages (breaker_id) WHERE held_at IS NOT NULL;

-- Campaign control: a paused campaign remembers where it was; its runs pause with it and
-- are launched again (a new run key each time) when it resumes.
ALTER TABLE campaigns ADD COLUMN paused_from text;
ALTER TABLE campaign_runs DROP CONSTRAINT campaign_runs_status_check;
ALTER TABLE campaign_runs ADD CONSTRAINT campaign_runs_status_check CHECK (status IN (
    'pending', 'dispatching', 'dispatched', 'paused', 'completed', 'cancelled', 'failed'));
ALTER TABLE campaign_runs ADD COLUMN resumes integer NOT NULL DEFAULT 0 CHECK (resumes >= 0);
COMMENT ON COLUMN campaign_runs.resumes IS 'Times the run was resumed after a pause: part of its dispatch run key.';
