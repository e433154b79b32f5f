-- The media engine's outputs: HLS, cover, codec strings, prefetch figures and quality.
ALTER TABLE renditions
    ADD COLUMN codec              text NOT NULL DEFAULT 'h264',
    ADD COLUMN codec_string       text,
    ADD COLUMN prefetch_bytes_3s  bigint,
    ADD COLUMN hls_playlist_key   text,
    ADD COLUMN psnr               double precision,
    ADD COLUMN ssim               double precision;

ALTER TABLE videos
    ADD COLUMN hls_master_key  text,
    ADD COLUMN cover_key       text;
