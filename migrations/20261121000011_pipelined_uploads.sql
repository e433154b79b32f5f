-- Transcoding while the upload arrives (issue 5). A chunked upload of media chunks reserves its
-- video and job ids when it is created, so each chunk's fast-tier encode can write straight to
-- the playback objects of that job; each chunk row tracks its encode like a slice (state,
-- lease, attempts) and keeps what it produced. A job whose fast tier came from its chunks is
-- marked `pipelined`.
ALTER TABLE uploads ADD COLUMN video_id uuid, ADD COLUMN job_id uuid;

ALTER TABLE upload_chunks
    ADD COLUMN encode_state text CHECK (encode_state IN ('queued', 'running', 'done', 'failed')),
    ADD COLUMN encode_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN encode_owner text,
    ADD COLUMN encode_lease_until timestamptz,
    ADD COLUMN encode_error text,
    ADD COLUMN encoded jsonb;

CREATE INDEX upload_chunks_encode_lease ON upload_chunks (encode_lease_until)
    WHERE encode_state = 'running';

ALTER TABLE jobs ADD COLUMN pipelined boolean NOT NULL DEFAULT false;

-- A pipelined fast tier is HLS only (its MP4s are not muxed): its renditions say so.
ALTER TABLE renditions DROP CONSTRAINT renditions_container_check;
ALTER TABLE renditions ADD CONSTRAINT renditions_container_check CHECK (container IN ('mp4', 'hls'));
