-- Plays older than a couple of hours are kept per video and hour, not per minute: the tracker
-- moves them (VTX_HOT_ROLLUP_AFTER_SECS), so a day's window reads 24 rows per video, not 1,440.
-- A play counts in exactly one of the two tables.
CREATE TABLE play_counts_hourly (
    video_id  uuid NOT NULL REFERENCES videos (id) ON DELETE CASCADE,
    hour      timestamptz NOT NULL,
    plays     bigint NOT NULL CHECK (plays >= 0),
    PRIMARY KEY (video_id, hour)
);
CREATE INDEX play_counts_hourly_hour ON play_counts_hourly (hour);
