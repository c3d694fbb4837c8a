-- A delivery report counts a sent message as replied to when its recipient wrote to the
-- organisation after it. Without this index each sent row scanned every message created
-- since it: a 5,000-message report took seconds of database CPU, and the time grew with the
-- square of the run. Inbound rows only, so outbound traffic does not widen it.
CREATE INDEX messages_inbound_peer_idx ON messages (organisation_id, peer_phone, created_at)
    WHERE direction = 'inbound';
