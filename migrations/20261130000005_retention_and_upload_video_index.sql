-- Events (and their deliveries) are forgotten after VTX_WEBHOOK_RETENTION_DAYS once every
-- delivery has ended; the dispatcher finds them by age.
CREATE INDEX webhook_events_occurred ON webhook_events (occurred_at) WHERE fanned_out;

-- Whether a video still uploading plays from signed URLs only is read from its upload.
CREATE INDEX uploads_video ON uploads (video_id) WHERE video_id IS NOT NULL;
