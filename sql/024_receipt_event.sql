-- A receipt copied its whole status object (`raw`), which nothing read: the object is in the
-- event the receipt was read from, which the inbox keeps about as long as the receipt. The
-- receipt names that event instead, and every receipt written is a few hundred bytes smaller.
ALTER TABLE message_receipts ADD COLUMN event_id bigint;
ALTER TABLE message_receipts DROP COLUMN raw;
COMMENT ON COLUMN message_receipts.event_id IS 'The webhook_inbox event this receipt was read from (its payload holds the whole status).';
