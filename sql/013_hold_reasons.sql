-- Why a pending row is held (no payload on the queue): its campaign is paused, a circuit
-- breaker on its scope is open, its organisation's messaging limit is reached, or an
-- operator asked for its failure to be retried. Each is lifted its own way, and the
-- campaign's status explains its waiting rows by it.
ALTER TABLE messages ADD COLUMN hold_reason text
    CHECK (hold_reason IN ('paused', 'breaker', 'messaging_limit', 'retry'));
UPDATE messages SET hold_reason = CASE WHEN breaker_id IS NOT NULL THEN 'breaker' ELSE 'paused' END
    WHERE held_at IS NOT NULL;
ALTER TABLE messages ADD CONSTRAINT messages_held_for_a_reason
    CHECK ((held_at IS NULL) = (hold_reason IS NULL));
CREATE INDEX messages_limit_held_idx ON messages (organisation_id, id)
    WHERE hold_reason = 'messaging_limit';
