-- When the webhook carrying an inbound message reached us. Inbox workers apply events
-- concurrently and a backlog late, so `created_at` (when the row was applied) is not the
-- customer's order; a turn is read in this order instead. NULL for outbound rows.
ALTER TABLE messages ADD COLUMN received_at timestamptz;
COMMENT ON COLUMN messages.received_at IS 'Inbound: webhook_inbox.received_at of the event that carried it (arrival order); NULL for outbound.';

-- One time per event, taken as each row is inserted: the events of one batch (group commit)
-- keep their arrival order rather than sharing the batch's transaction time.
COMMENT ON COLUMN webhook_inbox.received_at IS 'When the app stored the event; distinct per event, in arrival order.';
