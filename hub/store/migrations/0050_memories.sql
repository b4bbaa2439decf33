-- Conversation memory: the durable source of the vector `memory` collection (rebuildable from here).
CREATE TABLE memories (
    id       uuid PRIMARY KEY,
    text     text        NOT NULL,
    site     text        NOT NULL,
    username text,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memories_at_idx ON memories (at);
