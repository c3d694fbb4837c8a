-- The WhatsApp Business account as Meta sees it: the messaging limit (tier) WhatsApp sets,
-- each number's throughput, quality rating and name status read from the Graph API, and the
-- account's standing (bans, restrictions, violations). Every change is an `account_events`
-- row saying where it came from; the newest fact wins, so events delivered out of order
-- never let an older one overwrite a newer one.

-- Every tier Meta uses (TIER_50 … TIER_100K; TIER_1K in older documents), NULL = unlimited.
ALTER TABLE organisations DROP CONSTRAINT organisations_messaging_limit_check;
ALTER TABLE organisations ADD CONSTRAINT organisations_messaging_limit_check CHECK (
    messaging_limit IS NULL OR messaging_limit IN (50, 250, 1000, 2000, 10000, 100000));
ALTER TABLE organisations ADD COLUMN messaging_limit_source text
    CHECK (messaging_limit_source IN ('operator', 'webhook', 'graph_api'));
ALTER TABLE organisations ADD COLUMN messaging_limit_at timestamptz;
COMMENT ON COLUMN organisations.messaging_limit_at IS 'When the limit in force was decided (a webhook''s entry time, a Graph API read, an operator''s change); NULL: the default at creation, which any fact from Meta replaces.';

-- A number's state, read from the Graph API (GET /{phone-number-id}?fields=…). The
-- throughput level sets messages_per_second (STANDARD 80, HIGH 1,000).
ALTER TABLE phone_numbers ADD COLUMN verified_name text;
ALTER TABLE phone_numbers ADD COLUMN quality_rating text;
ALTER TABLE phone_numbers ADD COLUMN name_status text;
ALTER TABLE phone_numbers ADD COLUMN throughput_level text;
ALTER TABLE phone_numbers ADD COLUMN throughput_at timestamptz;
ALTER TABLE phone_numbers ADD COLUMN status_read_at timestamptz;
ALTER TABLE phone_numbers ADD COLUMN status_error text;
ALTER TABLE phone_numbers ADD COLUMN status_error_at timestamptz;
COMMENT ON COLUMN phone_numbers.throughput_at IS 'When the throughput in force was decided: an older webhook does not overwrite it.';
COMMENT ON COLUMN phone_numbers.status_error IS 'The Graph API error of the last failed status read (code: title); cleared by a successful one.';

CREATE TABLE account_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- NULL when no organisation holds the WABA named by the webhook (kept all the same).
    organisation_id     uuid REFERENCES organisations (id),
    waba_id             text,
    phone_number_id     text,
    kind                text NOT NULL CHECK (kind IN (
                            'messaging_limit', 'throughput', 'ban', 'restriction', 'violation',
                            'account')),
    source              text NOT NULL CHECK (source IN ('operator', 'webhook', 'graph_api')),
    -- The webhook field and Meta's `event` value (e.g. phone_number_quality_update,
    -- THROUGHPUT_UPGRADE), or what the operator did.
    field               text,
    event               text,
    -- Ours before, and the value announced (for a limit: 250 … 100000, unlimited, or the
    -- tier as Meta sent it when it changes nothing, e.g. TIER_NOT_SET).
    old_value           text,
    new_value           text,
    applied             boolean NOT NULL,
    note                text,
    actor               text,
    reason              text,
    -- The change's value as Meta sent it (old_limit, restriction_info, ban_info, …).
    detail              jsonb,
    inbox_event_id      bigint,
    -- The account breaker this event opened.
    breaker_id          bigint REFERENCES circuit_breakers (id),
    occurred_at         timestamptz NOT NULL,
    recorded_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX account_events_organisation_idx ON account_events (organisation_id, kind, occurred_at DESC, id DESC);
-- WhatsApp redelivers webhooks: the same fact is recorded once.
CREATE UNIQUE INDEX account_events_webhook_once ON account_events (
    COALESCE(waba_id, ''), kind, COALESCE(phone_number_id, ''), COALESCE(event, ''),
    COALESCE(new_value, ''), occurred_at) WHERE source = 'webhook';
COMMENT ON TABLE account_events IS 'Every change of an organisation''s WhatsApp account, limits and numbers: what, from which source, old and new value, when, and whether it was applied.';
