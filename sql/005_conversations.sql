-- Webhook processing and the conversation agent: retry bookkeeping for the inbox and inbound
-- media, the agent's per-conversation lease, and which inbound messages a turn has handled.

ALTER TABLE webhook_inbox ADD COLUMN retry_at timestamptz;
COMMENT ON COLUMN webhook_inbox.retry_at IS 'After a failed attempt: not before this time. Rows with processed_at set and error set failed for good.';

-- Answered by the agent, confirmed as an opt-out, or seen while an operator had the conversation.
ALTER TABLE messages ADD COLUMN handled_at timestamptz;
UPDATE messages SET handled_at = created_at WHERE direction = 'inbound';
CREATE INDEX messages_unhandled_idx ON messages (conversation_id, created_at)
    WHERE direction = 'inbound' AND handled_at IS NULL;

-- One agent turn at a time per conversation, across app instances; expires if its holder dies.
ALTER TABLE conversations ADD COLUMN agent_lease_until timestamptz;

ALTER TABLE media ADD COLUMN attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0);
ALTER TABLE media ADD COLUMN retry_at timestamptz;
CREATE INDEX media_pending_idx ON media (id) WHERE status = 'pending' AND provider_media_id IS NOT NULL;
