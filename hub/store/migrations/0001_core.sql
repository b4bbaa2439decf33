-- Core tables: the audit trail, the MQTT inbox (persist before acknowledge) and the outbox (relay at QoS 2).

CREATE TABLE events (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor          text        NOT NULL,
    kind           text        NOT NULL,
    subject        text,
    correlation_id text,
    body           jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX events_at_idx ON events (at DESC, id DESC);
CREATE INDEX events_kind_at_idx ON events (kind, at DESC);
CREATE INDEX events_subject_idx ON events (subject, at DESC) WHERE subject IS NOT NULL;
CREATE INDEX events_correlation_idx ON events (correlation_id) WHERE correlation_id IS NOT NULL;

-- The audit trail is append-only: rows are never changed (retention may delete old ones).
CREATE FUNCTION events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events is append-only';
END $$;
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

CREATE TABLE inbox (
    id            bigserial PRIMARY KEY,
    dedupe_key    text        NOT NULL UNIQUE,
    topic         text        NOT NULL,
    payload       bytea       NOT NULL,
    properties    jsonb       NOT NULL DEFAULT '{}'::jsonb,
    qos           smallint    NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    state         text        NOT NULL DEFAULT 'pending'
                  CHECK (state IN ('pending', 'done', 'rejected', 'failed')),
    claimed_by    text,
    claimed_until timestamptz,
    attempts      integer     NOT NULL DEFAULT 0,
    finished_at   timestamptz,
    error         text
);
CREATE INDEX inbox_pending_idx ON inbox (id) WHERE state = 'pending';
CREATE INDEX inbox_finished_idx ON inbox (finished_at) WHERE state <> 'pending';

CREATE TABLE outbox (
    id              bigserial PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    topic           text        NOT NULL,
    payload         bytea       NOT NULL,
    qos             smallint    NOT NULL DEFAULT 2,
    retain          boolean     NOT NULL DEFAULT false,
    properties      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    claimed_by      text,
    claimed_until   timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    sent_at         timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
