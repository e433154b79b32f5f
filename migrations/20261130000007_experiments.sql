-- A/B experiments: arms of encoder profiles (by video) or delivery rules (by viewer), the videos
-- assigned when their jobs were planned, and what players report about each play.
CREATE TABLE experiments (
    id                      uuid PRIMARY KEY,
    name                    text NOT NULL,
    unit                    text NOT NULL CHECK (unit IN ('video', 'viewer')),
    arms                    jsonb NOT NULL,
    effective_play_seconds  double precision NOT NULL,
    state                   text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'stopped')),
    winner                  text,
    created_at              timestamptz NOT NULL DEFAULT now(),
    stopped_at              timestamptz
);
-- One running experiment per unit: every video (or viewer) is in at most one arm.
CREATE UNIQUE INDEX experiments_running_unit ON experiments (unit) WHERE state = 'running';

CREATE TABLE experiment_videos (
    experiment_id  uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    video_id       uuid NOT NULL,
    arm            text NOT NULL,
    PRIMARY KEY (experiment_id, video_id)
);

CREATE TABLE playback_reports (
    id               bigserial PRIMARY KEY,
    experiment_id    uuid NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    arm              text NOT NULL,
    video_id         uuid NOT NULL,
    first_frame_ms   integer,
    stalls           integer NOT NULL,
    failed           boolean NOT NULL,
    watched_seconds  double precision NOT NULL,
    bytes            bigint NOT NULL,
    reported_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX playback_reports_arm ON playback_reports (experiment_id, arm);
