-- Webhooks (issue 16). An event is recorded in the transaction that changes the state it
-- reports, so none is lost or invented; a dispatcher renders it and fans it out to the enabled
-- endpoints that asked for its type, then delivers each copy at least once with retries.
CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY,
    url         text NOT NULL CHECK (length(url) <= 2048),
    -- Empty: every type.
    event_types text[] NOT NULL DEFAULT '{}',
    secret      text NOT NULL,
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 512),
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_events (
    id          uuid PRIMARY KEY,
    event_type  text NOT NULL CHECK (event_type IN
                    ('video.published', 'video.upgraded', 'video.failed', 'video.extreme_added',
                     'upload.expired')),
    video_id    uuid,
    upload_id   uuid,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    fanned_out  boolean NOT NULL DEFAULT false
);
CREATE INDEX webhook_events_to_fan_out ON webhook_events (occurred_at) WHERE NOT fanned_out;

CREATE TABLE webhook_deliveries (
    event_id        uuid NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    payload         jsonb NOT NULL,
    state           text NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_of_endpoint ON webhook_deliveries (endpoint_id, created_at);
