-- Home Assistant discovery configs the hub has published (retained) to the broker, so that after a restart
-- with a changed configuration it can remove what disappeared: a component (re-published as {"p": …}) or a
-- whole device config (an empty retained payload). One row per discovery topic.
CREATE TABLE ha_discovery (
    discovery_prefix text        NOT NULL,
    object_id        text        NOT NULL,             -- <prefix>/device/<object_id>/config
    hub_id           text        NOT NULL,
    components       jsonb       NOT NULL DEFAULT '{}'::jsonb,  -- component_id -> platform, as last published
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (discovery_prefix, object_id)
);
CREATE INDEX ha_discovery_hub_idx ON ha_discovery (hub_id);
