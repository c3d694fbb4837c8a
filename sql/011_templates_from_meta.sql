-- Templates as Meta has them. A template's status, category, quality score and components
-- are Meta's, read from the WhatsApp Business account (the `whatsapp_templates` sync) and
-- pushed by its webhooks; which contact field, attribute, asset or literal fills each
-- parameter (`parameters`) stays ours, and is checked against Meta's components.

-- Meta's statuses are kept as Meta spells them (APPROVED, PENDING, REJECTED, PAUSED,
-- DISABLED, IN_APPEAL, PENDING_DELETION, DELETED, ARCHIVED, LIMIT_EXCEEDED, and any Meta
-- adds); the lowercase ones stay for templates declared locally.
ALTER TABLE templates DROP CONSTRAINT templates_status_check;
ALTER TABLE templates ADD CONSTRAINT templates_status_check CHECK (
    status IN ('pending', 'approved', 'rejected', 'paused', 'disabled')
    OR status ~ '^[A-Z][A-Z_]{1,39}$');

ALTER TABLE templates ADD COLUMN origin text NOT NULL DEFAULT 'local'
    CHECK (origin IN ('local', 'meta'));
ALTER TABLE templates ADD COLUMN meta_template_id text;
ALTER TABLE templates ADD COLUMN quality_score text;
ALTER TABLE templates ADD COLUMN rejected_reason text;
ALTER TABLE templates ADD COLUMN status_reason text;
ALTER TABLE templates ADD COLUMN components jsonb
    CHECK (components IS NULL OR jsonb_typeof(components) = 'array');
ALTER TABLE templates ADD COLUMN header_format text;
ALTER TABLE templates ADD COLUMN header_parameters integer CHECK (header_parameters >= 0);
ALTER TABLE templates ADD COLUMN body_parameters integer CHECK (body_parameters >= 0);
ALTER TABLE templates ADD COLUMN buttons jsonb
    CHECK (buttons IS NULL OR jsonb_typeof(buttons) = 'array');
ALTER TABLE templates ADD COLUMN config_problems jsonb NOT NULL DEFAULT '[]'
    CHECK (jsonb_typeof(config_problems) = 'array');
-- When each of Meta's facts was true: a webhook's `entry[].time`, or the moment a sync
-- started reading. An older event never overwrites a newer one.
ALTER TABLE templates ADD COLUMN status_at timestamptz;
ALTER TABLE templates ADD COLUMN category_at timestamptz;
ALTER TABLE templates ADD COLUMN quality_at timestamptz;
ALTER TABLE templates ADD COLUMN synced_at timestamptz;
COMMENT ON COLUMN templates.origin IS 'Who created the row: an operator (local) or a sync of Meta''s templates (meta).';
COMMENT ON COLUMN templates.synced_at IS 'When a sync last found the template at Meta; NULL: Meta has never listed it.';
COMMENT ON COLUMN templates.config_problems IS 'Where our parameters do not fit Meta''s components (body parameter count, media header); empty when they fit or the components are unknown.';
COMMENT ON COLUMN templates.body_parameters IS 'Distinct {{…}} variables in the body text of Meta''s template.';

-- One row per sync of an organisation's templates, applied in one transaction after every
-- page was read: "a sync found no such template" is answered from the newest.
CREATE TABLE template_syncs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id     uuid NOT NULL REFERENCES organisations (id),
    waba_id             text NOT NULL,
    read_at             timestamptz NOT NULL,
    applied_at          timestamptz NOT NULL DEFAULT now(),
    templates           integer NOT NULL CHECK (templates >= 0),
    created             integer NOT NULL CHECK (created >= 0),
    updated             integer NOT NULL CHECK (updated >= 0),
    removed             integer NOT NULL CHECK (removed >= 0),
    mismatched          integer NOT NULL CHECK (mismatched >= 0)
);
CREATE INDEX template_syncs_organisation_idx ON template_syncs (organisation_id, read_at DESC);

-- Template webhooks (status, category, quality), each recorded once with its time. An event
-- for a template we do not know yet waits here (`pending`) and is applied when a sync finds
-- the template or an operator creates it.
CREATE TABLE template_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id     uuid NOT NULL REFERENCES organisations (id),
    template_id         bigint REFERENCES templates (id),
    field               text NOT NULL CHECK (field IN (
                            'message_template_status_update', 'template_category_update',
                            'message_template_quality_update')),
    name                text NOT NULL,
    language            text NOT NULL,
    meta_template_id    text,
    -- Meta's value as sent (the status event, the category, the quality score) and what
    -- it sets: `kind` status|category|quality, or `noted` when it sets nothing.
    value               text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('status', 'category', 'quality', 'noted')),
    new_value           text,
    reason              text,
    occurred_at         timestamptz NOT NULL,
    inbox_event_id      bigint,
    outcome             text NOT NULL DEFAULT 'pending' CHECK (outcome IN (
                            'pending', 'applied', 'stale', 'noted')),
    detail              text,
    recorded_at         timestamptz NOT NULL DEFAULT now(),
    applied_at          timestamptz,
    CHECK ((kind = 'noted') = (new_value IS NULL))
);
-- WhatsApp redelivers webhooks: the same event is recorded once.
CREATE UNIQUE INDEX template_events_once
    ON template_events (organisation_id, field, name, language, value, occurred_at);
CREATE INDEX template_events_pending_idx
    ON template_events (organisation_id, name, language, occurred_at) WHERE outcome = 'pending';
COMMENT ON COLUMN template_events.outcome IS 'pending: template unknown yet; applied; stale: older than what the template already holds; noted: recorded, changes nothing (e.g. FLAGGED, an impending category change).';
