-- Distributed pipeline: each job's tiers and slices tracked durably, renditions kept per tier,
-- and a live-tier pointer on videos that moves in one transaction.

ALTER TABLE videos DROP CONSTRAINT videos_state_check;
UPDATE videos SET state = 'published' WHERE state = 'ready';
ALTER TABLE videos ADD CONSTRAINT videos_state_check
    CHECK (state IN ('processing', 'published', 'failed'));
ALTER TABLE videos
    ADD COLUMN live_tier     text,
    ADD COLUMN live_job_id   uuid,
    ADD COLUMN published_at  timestamptz;
UPDATE videos v SET live_tier = 'fast', live_job_id = r.job_id, published_at = v.updated_at
    FROM (SELECT DISTINCT video_id, job_id FROM renditions) r
    WHERE r.video_id = v.id AND v.state = 'published';

-- What the scheduler decided (the source's timing and slice windows), and the shared audio.
ALTER TABLE jobs
    ADD COLUMN plan       jsonb,
    ADD COLUMN audio_key  text;

CREATE TABLE job_tiers (
    job_id         uuid NOT NULL REFERENCES jobs (id),
    tier           text NOT NULL CHECK (tier IN ('fast', 'high', 'extreme')),
    state          text NOT NULL CHECK (state IN ('waiting', 'encoding', 'merging', 'done', 'failed')),
    slices_total   integer NOT NULL CHECK (slices_total > 0),
    slices_done    integer NOT NULL DEFAULT 0,
    -- Set by the one transaction that completes the last slice; it alone queues the merge.
    merge_queued   boolean NOT NULL DEFAULT false,
    error_code     text,
    error_message  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    encoded_at     timestamptz,
    finished_at    timestamptz,
    PRIMARY KEY (job_id, tier),
    CHECK (slices_done <= slices_total)
);

CREATE TABLE slices (
    job_id            uuid NOT NULL,
    tier              text NOT NULL,
    idx               integer NOT NULL CHECK (idx >= 0),
    state             text NOT NULL CHECK (state IN ('queued', 'running', 'done')),
    attempts          integer NOT NULL DEFAULT 0,
    lease_owner       text,
    lease_expires_at  timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    PRIMARY KEY (job_id, tier, idx),
    FOREIGN KEY (job_id, tier) REFERENCES job_tiers (job_id, tier)
);
CREATE INDEX slices_running_leases ON slices (lease_expires_at) WHERE state = 'running';

ALTER TABLE renditions ADD COLUMN tier text NOT NULL DEFAULT 'fast';
ALTER TABLE renditions DROP CONSTRAINT renditions_pkey;
ALTER TABLE renditions ADD PRIMARY KEY (video_id, job_id, tier, name, container);

-- Object prefixes to delete once nobody can still be fetching them (replaced tiers, scratch).
CREATE TABLE garbage (
    id            bigserial PRIMARY KEY,
    prefix        text NOT NULL,
    delete_after  timestamptz NOT NULL
);
CREATE INDEX garbage_due ON garbage (delete_after);

-- Workers and the encoders they can open, for operators and for routing.
CREATE TABLE workers (
    id          text PRIMARY KEY,
    host        text NOT NULL,
    encoders    text[] NOT NULL,
    queues      text[] NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);
