-- A video's events, newest first: what its status stream (GET /v1/videos/{id}/events) watches.
CREATE INDEX webhook_events_of_video ON webhook_events (video_id, occurred_at) WHERE video_id IS NOT NULL;
