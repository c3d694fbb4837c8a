-- A customer's identity changes (WhatsApp's `user_changed_number` system message): the
-- contact takes the new number, or is merged into the contact that already has it. Each
-- change is one row, once per system message, so a webhook delivered twice records nothing
-- more.
CREATE TABLE contact_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    contact_id          bigint NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('number_changed', 'merged')),
    old_phone           text,
    new_phone           text,
    -- The contact merged into this one; it no longer exists.
    merged_contact_id   bigint,
    message_id          bigint REFERENCES messages (id) ON DELETE SET NULL,
    occurred_at         timestamptz NOT NULL DEFAULT now(),
    recorded_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contact_events_contact_idx ON contact_events (contact_id, occurred_at DESC, id DESC);
COMMENT ON TABLE contact_events IS 'Changes of a contact''s identity: a new phone number, another contact merged into it.';

-- The value-level `errors` array of a webhook change (beside `messages` / `statuses`): what
-- WhatsApp could not deliver to us, kept with the event that reported it.
ALTER TABLE webhook_inbox ADD COLUMN provider_errors jsonb
    CHECK (provider_errors IS NULL OR jsonb_typeof(provider_errors) = 'array');
CREATE INDEX webhook_inbox_provider_errors_idx ON webhook_inbox (id) WHERE provider_errors IS NOT NULL;
COMMENT ON COLUMN webhook_inbox.provider_errors IS 'The errors WhatsApp reported in this event (code, title, message, details), as it sent them.';
