-- Archival: what each day's manifest deleted or failed, and an index that keeps the
-- `media.message_id ON DELETE SET NULL` action cheap when a day of messages is deleted.
ALTER TABLE archive_manifests
    ADD COLUMN rows_deleted bigint NOT NULL DEFAULT 0,
    ADD COLUMN rows_failed  bigint NOT NULL DEFAULT 0,
    ADD COLUMN updated_at   timestamptz NOT NULL DEFAULT now();

CREATE INDEX media_message_idx ON media (message_id) WHERE message_id IS NOT NULL;
