-- Hazard confirmations: a durable state machine; every transition is one conditional UPDATE.
--   pending → confirmed → executing → done | failed;  pending → cancelled | expired

CREATE TABLE confirmations (
    id              text PRIMARY KEY,
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'confirmed', 'executing', 'done', 'failed', 'cancelled', 'expired')),
    device          text        NOT NULL,
    action          jsonb       NOT NULL,
    hazard_class    text        NOT NULL,
    level           text        NOT NULL CHECK (level IN ('ack', 'pin')),
    prompt          text        NOT NULL,
    principal_kind  text        NOT NULL,
    site            text,
    session_id      text,
    requested_user  text,
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    decided_at      timestamptz,
    decided_by      text,
    executed_at     timestamptz,
    finished_at     timestamptz,
    command_key     text UNIQUE,
    error           text
);
CREATE INDEX confirmations_open_idx ON confirmations (state, expires_at) WHERE state IN ('pending', 'executing');
CREATE INDEX confirmations_site_idx ON confirmations (site, created_at DESC);

-- PIN failures and lockout. One scope per house PIN: a lockout stops guessing from every source at once.
CREATE TABLE pin_attempts (
    scope        text PRIMARY KEY,
    failures     integer     NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
