-- Hotness (issue 6): plays counted per video and minute (the gateway aggregates in memory and
-- adds its counts in batched upserts), the uploader's follower count for the prediction at
-- publish, and one extreme-encode request per video, whichever way it was picked.
CREATE TABLE play_counts (
    video_id  uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    minute    timestamptz NOT NULL,
    plays     bigint NOT NULL CHECK (plays >= 0),
    PRIMARY KEY (video_id, minute)
);
CREATE INDEX play_counts_minute ON play_counts (minute);

ALTER TABLE uploads ADD COLUMN followers bigint CHECK (followers >= 0);

CREATE TABLE extreme_requests (
    video_id      uuid PRIMARY KEY REFERENCES videos (id) ON DELETE CASCADE,
    reason        text NOT NULL CHECK (reason IN ('hot', 'followers')),
    -- Plays over the window when the tracker picked it (hot), or the follower count.
    score         bigint NOT NULL,
    state         text NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'encoding', 'added', 'rejected', 'failed')),
    job_id        uuid REFERENCES jobs (id),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    -- Per codec and rung: bitrate saving and quality against the high tier.
    result        jsonb
);
CREATE INDEX extreme_requests_state ON extreme_requests (state);

-- An extreme encode is a job of its own on the video (kind `extreme`, tier extreme only); the
-- upload's job stays as it was.
ALTER TABLE jobs ADD COLUMN kind text NOT NULL DEFAULT 'upload' CHECK (kind IN ('upload', 'extreme'));
