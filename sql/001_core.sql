-- One schema for campaigns, media generation, dispatch, sending, conversations and archival.
-- Invariants live in the database: status checks, foreign keys, and unique keys that make
-- a double send impossible (one message per campaign run and member, one row per wamid).

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $$;

-- A business portfolio: it owns phone numbers, contacts, templates and campaigns, and shares
-- one messaging limit (unique recipients of business-initiated messages per rolling 24 h).
CREATE TABLE organisations (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL,
    messaging_limit     integer CHECK (messaging_limit IS NULL OR messaging_limit IN (250, 2000, 10000, 100000)),
    created_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON COLUMN organisations.messaging_limit IS 'Messaging tier; NULL means unlimited.';

CREATE TABLE phone_numbers (
    phone_number_id     text PRIMARY KEY,
    organisation_id     uuid NOT NULL REFERENCES organisations (id),
    display_phone       text,
    messages_per_second integer NOT NULL DEFAULT 80 CHECK (messages_per_second BETWEEN 1 AND 1000),
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX phone_numbers_organisation_idx ON phone_numbers (organisation_id);

-- A customer is known by an E.164 phone, by WhatsApp's business-scoped user id, or both.
CREATE TABLE contacts (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id     uuid NOT NULL REFERENCES organisations (id),
    phone               text CHECK (phone ~ '^\+[1-9][0-9]{6,14}$'),
    wa_user_id          text,
    name                text,
    attributes          jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
    opted_out           boolean NOT NULL DEFAULT false,
    opted_out_at        timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (phone IS NOT NULL OR wa_user_id IS NOT NULL),
    UNIQUE (organisation_id, phone),
    UNIQUE (organisation_id, wa_user_id)
);
CREATE TRIGGER contacts_touch BEFORE UPDATE ON contacts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE templates (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id     uuid NOT NULL REFERENCES organisations (id),
    name                text NOT NULL,
    language            text NOT NULL DEFAULT 'en',
    category            text NOT NULL DEFAULT 'marketing' CHECK (category IN ('marketing', 'utility', 'authentication')),
    message_type        text NOT NULL DEFAULT 'text' CHECK (message_type IN ('text', 'image', 'video', 'document')),
    body                text,
    -- [{"type": "header"|"body"|"button", "valueType": "text"|"image"|..., "source": "contact.name" | "attributes.x" | "literal:..."}]
    parameters          jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(parameters) = 'array'),
    status              text NOT NULL DEFAULT 'approved' CHECK (status IN ('pending', 'approved', 'rejected', 'paused', 'disabled')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organisation_id, name, language)
);
CREATE TRIGGER templates_touch BEFORE UPDATE ON templates FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- User-written media generators (seed 1): Python source defining generate_asset().
CREATE TABLE asset_generate_files (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    template_id         bigint NOT NULL REFERENCES templates (id),
    file_name           text NOT NULL,
    file_content        text NOT NULL,
    description         text,
    version             integer NOT NULL CHECK (version > 0),
    is_active           boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (template_id, version)
);
CREATE UNIQUE INDEX asset_generate_files_one_active ON asset_generate_files (template_id) WHERE is_active;

CREATE TABLE campaigns (
    id                              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organisation_id                 uuid NOT NULL REFERENCES organisations (id),
    name                            text NOT NULL,
    status                          text NOT NULL DEFAULT 'draft' CHECK (status IN (
                                        'draft', 'approved', 'asset_generation', 'asset_generated',
                                        'ready_to_launch', 'running', 'completed',
                                        'paused', 'cancelled', 'failed')),
    status_reason                   text,
    recurrence                      text NOT NULL DEFAULT 'once' CHECK (recurrence IN ('once', 'daily', 'weekly', 'monthly')),
    start_at                        timestamptz NOT NULL DEFAULT now(),
    end_at                          timestamptz CHECK (end_at IS NULL OR end_at >= start_at),
    message_type                    text NOT NULL CHECK (message_type IN ('template', 'text', 'image', 'video', 'document', 'audio')),
    template_id                     bigint REFERENCES templates (id),
    message_content                 text,
    media_caption                   text,
    phone_number_id                 text REFERENCES phone_numbers (phone_number_id),
    asset_generation_status         text CHECK (asset_generation_status IN ('pending', 'running', 'completed', 'failed')),
    asset_generation_started_at     timestamptz,
    asset_generation_completed_at   timestamptz,
    asset_failure_ratio             real CHECK (asset_failure_ratio BETWEEN 0 AND 1),
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now(),
    CHECK (message_type <> 'template' OR template_id IS NOT NULL),
    CHECK (message_type <> 'text' OR message_content IS NOT NULL)
);
CREATE INDEX campaigns_status_idx ON campaigns (status, updated_at);
CREATE INDEX campaigns_organisation_idx ON campaigns (organisation_id);
CREATE TRIGGER campaigns_touch BEFORE UPDATE ON campaigns FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE campaign_audience (
    id                      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    campaign_id             uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    contact_id              bigint REFERENCES contacts (id),
    name                    text,
    msisdn                  text NOT NULL,
    attributes              jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(attributes) = 'object'),
    status                  text NOT NULL DEFAULT 'pending' CHECK (status IN (
                                'pending', 'asset_generating', 'asset_generated',
                                'ready_to_send', 'failed', 'skipped')),
    generated_asset_urls    jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(generated_asset_urls) = 'object'),
    generator_version       integer,
    attempts                integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error              text,
    status_changed_at       timestamptz NOT NULL DEFAULT now(),
    created_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_id, msisdn)
);
CREATE INDEX campaign_audience_status_idx ON campaign_audience (campaign_id, status);
CREATE INDEX campaign_audience_stuck_idx ON campaign_audience (status_changed_at) WHERE status = 'asset_generating';

-- One row per due occurrence of a campaign; the unique key makes two sensor ticks harmless.
CREATE TABLE campaign_runs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id         uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    run_date            date NOT NULL,
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'dispatching', 'dispatched', 'completed', 'failed')),
    status_reason       text,
    queued              integer NOT NULL DEFAULT 0,
    failed              integer NOT NULL DEFAULT 0,
    skipped             integer NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    dispatched_at       timestamptz,
    UNIQUE (campaign_id, run_date)
);
CREATE INDEX campaign_runs_status_idx ON campaign_runs (status, id);

-- The customer-service thread with one contact.
CREATE TABLE conversations (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id     uuid NOT NULL REFERENCES organisations (id),
    contact_id          bigint NOT NULL UNIQUE REFERENCES contacts (id),
    phone_number_id     text REFERENCES phone_numbers (phone_number_id),
    human_takeover      boolean NOT NULL DEFAULT false,
    takeover_at         timestamptz,
    takeover_by         text,
    last_inbound_at     timestamptz,
    last_message_at     timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER conversations_touch BEFORE UPDATE ON conversations FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Every WhatsApp message, outbound (campaign, AI, operator) and inbound alike.
CREATE TABLE messages (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id         uuid NOT NULL REFERENCES organisations (id),
    conversation_id         bigint REFERENCES conversations (id),
    contact_id              bigint REFERENCES contacts (id),
    campaign_run_id         bigint REFERENCES campaign_runs (id),
    campaign_audience_id    uuid REFERENCES campaign_audience (id),
    direction               text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    sender_type             text NOT NULL CHECK (sender_type IN ('customer', 'campaign', 'ai', 'operator', 'system')),
    phone_number_id         text,
    peer_phone              text,
    peer_wa_user_id         text,
    message_type            text NOT NULL,
    body                    text,
    payload                 jsonb,
    media                   jsonb,
    provider_message_id     text UNIQUE,
    status                  text NOT NULL CHECK (status IN ('pending', 'sending', 'sent', 'delivered', 'read', 'failed', 'received')),
    sending_at              timestamptz,
    sent_at                 timestamptz,
    delivered_at            timestamptz,
    read_at                 timestamptz,
    failed_at               timestamptz,
    error_code              integer,
    error_title             text,
    error_detail            text,
    attempts                integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    provider_ts             timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (campaign_run_id, campaign_audience_id),
    CHECK ((direction = 'inbound') = (status = 'received')),
    CHECK ((direction = 'inbound') = (sender_type = 'customer')),
    CHECK ((campaign_run_id IS NULL) = (campaign_audience_id IS NULL)),
    CHECK (peer_phone IS NOT NULL OR peer_wa_user_id IS NOT NULL)
);
CREATE INDEX messages_created_idx ON messages (created_at);
CREATE INDEX messages_conversation_idx ON messages (conversation_id, created_at);
CREATE INDEX messages_run_status_idx ON messages (campaign_run_id, status) WHERE campaign_run_id IS NOT NULL;
CREATE INDEX messages_sending_idx ON messages (sending_at) WHERE status = 'sending';
CREATE TRIGGER messages_touch BEFORE UPDATE ON messages FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- Order of the message status machine; a receipt may only move a message forwards.
CREATE FUNCTION message_status_rank(status text) RETURNS integer LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE status
        WHEN 'pending' THEN 0 WHEN 'sending' THEN 1 WHEN 'sent' THEN 2
        WHEN 'delivered' THEN 3 WHEN 'read' THEN 4 WHEN 'failed' THEN 5
        WHEN 'received' THEN 0 END
$$;

-- Status receipts as they arrive; applied once their message is known (a receipt may
-- arrive before the sender has stored the wamid).
CREATE TABLE message_receipts (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider_message_id     text NOT NULL,
    message_id              bigint,
    status                  text NOT NULL CHECK (status IN ('sent', 'delivered', 'read', 'failed')),
    provider_ts             timestamptz,
    error_code              integer,
    error_title             text,
    raw                     jsonb NOT NULL,
    received_at             timestamptz NOT NULL DEFAULT now(),
    applied_at              timestamptz,
    UNIQUE (provider_message_id, status)
);
CREATE INDEX message_receipts_unapplied_idx ON message_receipts (provider_message_id) WHERE applied_at IS NULL;

-- Durable webhook inbox: the raw event is stored before WhatsApp gets its 200.
CREATE TABLE webhook_inbox (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload             jsonb NOT NULL,
    received_at         timestamptz NOT NULL DEFAULT now(),
    processed_at        timestamptz,
    attempts            integer NOT NULL DEFAULT 0,
    error               text
);
CREATE INDEX webhook_inbox_unprocessed_idx ON webhook_inbox (id) WHERE processed_at IS NULL;

-- Media seen by the platform: inbound media copied on arrival, generated assets, and what
-- the media archive moved.
CREATE TABLE media (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id     uuid REFERENCES organisations (id),
    message_id          bigint REFERENCES messages (id) ON DELETE SET NULL,
    provider_media_id   text,
    source_url          text,
    media_type          text NOT NULL CHECK (media_type IN ('image', 'video', 'audio', 'document', 'sticker', 'data')),
    mime_type           text,
    size_bytes          bigint CHECK (size_bytes >= 0),
    sha256              text,
    s3_bucket           text,
    s3_key              text,
    status              text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'stored', 'archived', 'failed')),
    error               text,
    archived_at         timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CHECK (source_url IS NOT NULL OR s3_key IS NOT NULL OR provider_media_id IS NOT NULL)
);
CREATE INDEX media_created_idx ON media (created_at) WHERE status <> 'archived';

CREATE TABLE archive_manifests (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind                text NOT NULL CHECK (kind IN ('messages', 'media')),
    day                 date NOT NULL,
    files               jsonb NOT NULL DEFAULT '[]',
    row_count           bigint NOT NULL DEFAULT 0,
    bytes_raw           bigint NOT NULL DEFAULT 0,
    bytes_compressed    bigint NOT NULL DEFAULT 0,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, day)
);
