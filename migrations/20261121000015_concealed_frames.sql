-- Damaged sources: frames that could not be decoded and were concealed (video: the frame before
-- shown again; audio: silence), counted per tier (each tier decodes the source) and, for the
-- audio encoded once per job, on the job.
ALTER TABLE job_tiers ADD COLUMN concealed_video_frames bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN concealed_audio_frames bigint NOT NULL DEFAULT 0;
