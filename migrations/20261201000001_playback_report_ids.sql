-- A player's own id for a play: a retried report with the same id counts once per experiment.
ALTER TABLE playback_reports ADD COLUMN play_id text;
CREATE UNIQUE INDEX playback_reports_play ON playback_reports (experiment_id, play_id)
    WHERE play_id IS NOT NULL;
