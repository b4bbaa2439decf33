-- Exactly-once QoS 2 relay across hub crashes (docs/spine.md, "Packet ids on the outbox rows"):
-- the packet id a row is published with is written before the PUBLISH leaves, together with the MQTT session
-- (client id) it belongs to, and `released` is set before the PUBREL leaves. A new process of the same client
-- id then finishes each handshake where it stopped instead of publishing the row again under a new id.
ALTER TABLE outbox
    ADD COLUMN packet_id      integer,
    ADD COLUMN packet_session text,
    ADD COLUMN released       boolean NOT NULL DEFAULT false;
CREATE INDEX outbox_packet_session_idx ON outbox (packet_session, packet_id) WHERE sent_at IS NULL AND packet_id IS NOT NULL;
