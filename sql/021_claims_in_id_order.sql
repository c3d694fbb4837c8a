-- A media run claims a campaign's pending members in id order, each claim after its last
-- one. With the id in this index a claim reads just the members it takes, whatever the
-- planner's statistics say; with (campaign_id, status) alone, a table not yet analysed
-- had each claim sort every pending member (5 ms a claim at 5,000 members). It serves
-- every query the narrower index did.
CREATE INDEX campaign_audience_status_id_idx ON campaign_audience (campaign_id, status, id);
DROP INDEX campaign_audience_status_idx;
