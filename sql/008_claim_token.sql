-- The sender's claim (`pending → sending`) autocommits. When the connection breaks before its
-- answer arrives, the worker cannot tell whether the rows became `sending`; it repeats the
-- claim with the same token, which takes back exactly the rows it claimed and never sent.
ALTER TABLE messages ADD COLUMN claim_token uuid;
COMMENT ON COLUMN messages.claim_token IS 'Which sender claim moved the row to sending; repeating that claim finds its rows again.';
