-- The last known state and availability of each configured device: warms the in-memory view at start-up.
-- Changes are also appended to the audit trail (events kind 'device.state'); this table keeps only the latest.

CREATE TABLE device_state (
    name        text        PRIMARY KEY,
    state       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    available   boolean,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
