-- The relay updates every QoS 2 outbox row three times (packet id, released, sent_at). Without an index on
-- the packet id columns and with room left in each page, the first two are HOT updates (no index entries).
-- The queries that looked rows up by packet id read the unsent rows through outbox_unsent_idx instead:
-- that set is small (rows in flight), whatever the size of the table.
DROP INDEX IF EXISTS outbox_packet_session_idx;
ALTER TABLE outbox SET (fillfactor = 60);
