-- Sending limits shared by every sender worker (WhatsApp enforces them per phone number and
-- per business portfolio, not per process), kept where all workers see them atomically.

-- Throughput: the next free send slot of each phone number. A worker reserves k consecutive
-- slots, 1/messages_per_second apart, in one statement; idle time earns no burst credit.
CREATE TABLE send_rate_slots (
    phone_number_id     text PRIMARY KEY,
    next_slot_at        timestamptz NOT NULL
);

-- Messaging limit: recipients of business-initiated (template) messages counted in the
-- rolling 24 hours, per organisation (business portfolio). One row per recipient: a second
-- message inside the window does not count again; an expired row is counted afresh.
CREATE TABLE messaging_window (
    organisation_id     uuid NOT NULL REFERENCES organisations (id),
    recipient           text NOT NULL,
    counted_at          timestamptz NOT NULL,
    PRIMARY KEY (organisation_id, recipient)
);
CREATE INDEX messaging_window_counted_idx ON messaging_window (organisation_id, counted_at);

-- Reserve `k` send slots of a phone number (default 80/s when the number is not registered);
-- returns the seconds from now until the first slot, and the slot spacing.
CREATE FUNCTION reserve_send_slots(phone text, k integer, OUT wait_seconds double precision, OUT spacing_seconds double precision)
LANGUAGE plpgsql AS $$
DECLARE
    step interval;
    last_slot timestamptz;
BEGIN
    SELECT interval '1 second' / COALESCE(
        (SELECT messages_per_second FROM phone_numbers WHERE phone_number_id = phone), 80)
        INTO step;
    INSERT INTO send_rate_slots AS s (phone_number_id, next_slot_at)
        VALUES (phone, clock_timestamp() + k * step)
        ON CONFLICT (phone_number_id) DO UPDATE
        SET next_slot_at = GREATEST(s.next_slot_at, clock_timestamp()) + k * step
        RETURNING next_slot_at INTO last_slot;
    wait_seconds := EXTRACT(EPOCH FROM (last_slot - k * step - clock_timestamp()));
    spacing_seconds := EXTRACT(EPOCH FROM step);
END $$;

-- Admit recipients under the organisation's messaging limit; returns those that may be sent
-- now (already counted in the window, or newly counted while room remains). NULL = unlimited.
CREATE FUNCTION admit_recipients(org uuid, recipients text[]) RETURNS text[]
LANGUAGE plpgsql AS $$
DECLARE
    cap integer;
    used integer;
    counted text[];
    fresh text[];
BEGIN
    SELECT messaging_limit INTO cap FROM organisations WHERE id = org;
    IF cap IS NULL THEN
        RETURN recipients;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('messaging_window'), hashtext(org::text));
    SELECT COALESCE(array_agg(recipient), '{}') INTO counted FROM messaging_window
        WHERE organisation_id = org AND recipient = ANY(recipients)
        AND counted_at > now() - interval '24 hours';
    SELECT count(*) INTO used FROM messaging_window
        WHERE organisation_id = org AND counted_at > now() - interval '24 hours';
    WITH candidates AS (
        SELECT r, min(n) AS n FROM unnest(recipients) WITH ORDINALITY AS u(r, n)
        WHERE r <> ALL(counted) GROUP BY r ORDER BY min(n) LIMIT GREATEST(cap - used, 0)
    ), inserted AS (
        INSERT INTO messaging_window (organisation_id, recipient, counted_at)
        SELECT org, r, now() FROM candidates
        ON CONFLICT (organisation_id, recipient) DO UPDATE SET counted_at = EXCLUDED.counted_at
        RETURNING recipient
    )
    SELECT COALESCE(array_agg(recipient), '{}') INTO fresh FROM inserted;
    RETURN counted || fresh;
END $$;

-- The delivery-report sensor reads campaign messages changed since its cursor.
CREATE INDEX messages_campaign_updated_idx ON messages (updated_at) WHERE campaign_run_id IS NOT NULL;
