-- Voice dialogue sessions that hold a hazard confirmation. Only these are durable: an ordinary dialogue
-- lost in a crash is harmless (the satellite times out), but a confirmation dialogue must be resumed on the
-- same site and session, or ended with a timeout once its confirm deadline (armed after the question was
-- spoken) has passed. The confirmation itself is the `confirmations` row; this is only the dialogue side.

CREATE TABLE voice_sessions (
    site            text        NOT NULL,
    session_id      text        NOT NULL,
    confirmation_id text        NOT NULL,
    custom_data     text,
    lang            text,
    state           text        NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'ended')),
    confirm_deadline timestamptz,
    end_reason      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    ended_at        timestamptz,
    PRIMARY KEY (site, session_id)
);
CREATE INDEX voice_sessions_open_idx ON voice_sessions (created_at) WHERE state = 'open';
CREATE INDEX voice_sessions_confirmation_idx ON voice_sessions (confirmation_id);
