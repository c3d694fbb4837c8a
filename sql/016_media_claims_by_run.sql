-- The Dagster run that claimed a member for media generation: several runs may generate one
-- campaign's media at once, and only the claims of runs that are no longer alive go back
-- to `pending` (MEDIA_RUNS_PER_CAMPAIGN).
ALTER TABLE campaign_audience ADD COLUMN claimed_by_run text;
