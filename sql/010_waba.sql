-- An organisation's WhatsApp Business account (WABA): account-level webhooks name it in
-- `entry[].id`, and its templates are read from it.
ALTER TABLE organisations ADD COLUMN waba_id text UNIQUE;
COMMENT ON COLUMN organisations.waba_id IS 'WhatsApp Business account id: matches entry[].id of account-level webhooks.';
