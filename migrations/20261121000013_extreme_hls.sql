-- HLS for the extreme renditions: per set of added codecs (`hevc`, `av1`, `av1+hevc`), the key
-- of a master playlist that lists the live high tier's H.264 variants beside the added ones.
ALTER TABLE extreme_requests ADD COLUMN hls_masters jsonb;
