-- The operator side of conversations: the "needs a human" flag, who did what, and the
-- console's sign-in sessions.

-- Raised by the agent's handoff; cleared only by an operator's takeover or dismissal.
ALTER TABLE conversations ADD COLUMN needs_human boolean NOT NULL DEFAULT false;
ALTER TABLE conversations ADD COLUMN needs_human_at timestamptz;
UPDATE conversations SET needs_human = true, needs_human_at = takeover_at
    WHERE human_takeover AND takeover_by = 'agent';
CREATE INDEX conversations_inbox_idx ON conversations
    (organisation_id, needs_human DESC, (coalesce(last_message_at, created_at)) DESC, id DESC);

-- The operator who wrote an outbound message (sender_type 'operator').
ALTER TABLE messages ADD COLUMN operator text;

-- Every takeover, handback, dismissal and handoff, with who did it.
CREATE TABLE conversation_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id     bigint NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    kind                text NOT NULL CHECK (kind IN ('flagged', 'takeover', 'handback', 'dismissed')),
    operator            text NOT NULL,
    token_id            bigint REFERENCES api_tokens (id),
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conversation_events_conversation_idx ON conversation_events (conversation_id, id);

-- Operator console sessions: the cookie holds a random secret, only its SHA-256 is stored.
-- A session acts as the token it was opened with (an organisation's, or with neither
-- organisation nor token id the platform admin's, whose SHA-256 must still match), and ends
-- with it (revoked, changed) or at expiry.
CREATE TABLE console_sessions (
    secret_sha256       bytea PRIMARY KEY,
    organisation_id     uuid REFERENCES organisations (id),
    token_id            bigint REFERENCES api_tokens (id) ON DELETE CASCADE,
    token_sha256        bytea NOT NULL,
    operator            text NOT NULL,
    csrf                text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL
);
CREATE INDEX console_sessions_expiry_idx ON console_sessions (expires_at);
