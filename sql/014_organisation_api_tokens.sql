-- Organisation API tokens: each acts for one organisation only. Only the SHA-256 of a token
-- is kept (the token is shown once, when created); `hint`, its first characters, tells
-- tokens apart in listings. A revoked token stays listed with who revoked it and when.
CREATE TABLE api_tokens (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organisation_id uuid NOT NULL REFERENCES organisations (id),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    token_sha256    bytea NOT NULL UNIQUE CHECK (length(token_sha256) = 32),
    hint            text NOT NULL,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    revoked_by      text,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);
CREATE INDEX api_tokens_organisation_idx ON api_tokens (organisation_id, id);
