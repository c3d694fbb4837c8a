-- Retention of the webhook history, redrive of failed events, and the bookkeeping that lets
-- a crash at any point be recovered: the sender's re-queue of lost payloads and the media
-- archive's hot objects still to delete.

-- Retention finds processed events and settled receipts by age.
CREATE INDEX webhook_inbox_processed_idx ON webhook_inbox (processed_at)
    WHERE processed_at IS NOT NULL;
CREATE INDEX message_receipts_applied_idx ON message_receipts (applied_at)
    WHERE applied_at IS NOT NULL;
CREATE INDEX message_receipts_unmatched_idx ON message_receipts (received_at)
    WHERE applied_at IS NULL;
-- Failed-for-good events are redriven by the time they arrived.
CREATE INDEX webhook_inbox_failed_idx ON webhook_inbox (received_at)
    WHERE processed_at IS NOT NULL AND error IS NOT NULL;
ALTER TABLE webhook_inbox ADD COLUMN redriven_at timestamptz;
COMMENT ON COLUMN webhook_inbox.redriven_at IS 'When an operator last sent this failed event back to processing.';

-- A pending row whose payload vanished from the queue (dead-lettered by SQS while the
-- database was down, or the queue emptied) is re-queued once from its stored payload.
ALTER TABLE messages ADD COLUMN requeued_at timestamptz;
COMMENT ON COLUMN messages.requeued_at IS 'When the sender re-queued this row because its payload was no longer on the queue; once per queueing.';
CREATE INDEX messages_queued_pending_idx ON messages (queued_at)
    WHERE status = 'pending' AND held_at IS NULL AND queued_at IS NOT NULL;

-- The media archive records the archived object and the hot object to delete in one commit,
-- then deletes it: a crash in between leaves the name of what to delete, not an orphan.
ALTER TABLE media ADD COLUMN hot_key text;
COMMENT ON COLUMN media.hot_key IS 'Key of the hot copy of an archived object, until it is deleted.';
CREATE INDEX media_hot_key_idx ON media (id) WHERE hot_key IS NOT NULL;
-- The conversation outbox: replies stored before their send, sent after the commit.
CREATE INDEX messages_outbox_idx ON messages (id)
    WHERE status = 'pending' AND campaign_run_id IS NULL AND direction = 'outbound';
