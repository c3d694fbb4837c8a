-- Dispatch asks, for every member of a page, whether the run already stored its message.
-- Keyed by member first, that is one probe per member whatever the planner believes of the
-- run. Keyed by run first, it was not: the statistics of `messages` never know a run newer
-- than their last ANALYZE, so the planner expected the run to have one row and compared
-- each member with every row the run had stored, and a campaign's third run on a fresh
-- database dispatched at a third of the rate of the first two. The indexes that lead with
-- the run still serve every query by run.
ALTER TABLE messages ADD CONSTRAINT messages_member_run_key
    UNIQUE (campaign_audience_id, campaign_run_id);
ALTER TABLE messages DROP CONSTRAINT messages_campaign_run_id_campaign_audience_id_key;
