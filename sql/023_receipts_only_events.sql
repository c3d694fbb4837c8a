-- Most webhook events hold only delivery receipts. The app already knows which when it
-- checks the envelope, and says so here; the inbox workers record and apply those events'
-- statuses in the database, in one statement per batch, without reading the events.
-- Events stored before this column existed count as mixed and are read as before.
ALTER TABLE webhook_inbox ADD COLUMN receipts_only boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN webhook_inbox.receipts_only IS 'The app found only delivery receipts (statuses) in this event when it stored it.';
