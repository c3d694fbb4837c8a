-- Campaign dispatch: which message rows SQS has accepted, and which run decided each member.
-- A row is queued once: `queued_at` is set in the transaction that records SQS's answer, so a
-- re-run sends exactly the rows still pending with no `queued_at`.
ALTER TABLE messages ADD COLUMN queued_at timestamptz;
CREATE INDEX messages_run_unqueued_idx ON messages (campaign_run_id, id)
    WHERE campaign_run_id IS NOT NULL AND status = 'pending' AND queued_at IS NULL;
-- No recipient gets two messages from one run, even when two members' numbers normalise alike.
CREATE UNIQUE INDEX messages_run_recipient_key ON messages (campaign_run_id, peer_phone)
    WHERE campaign_run_id IS NOT NULL;

-- The campaign run that last decided the member (queued, failed or skipped): a re-run of that
-- run skips it, and the run's check counts every member exactly once.
ALTER TABLE campaign_audience
    ADD COLUMN dispatch_run_id bigint REFERENCES campaign_runs (id) ON DELETE SET NULL;
CREATE INDEX campaign_audience_campaign_id_idx ON campaign_audience (campaign_id, id);
CREATE INDEX campaign_audience_dispatch_run_idx ON campaign_audience (dispatch_run_id)
    WHERE dispatch_run_id IS NOT NULL;
