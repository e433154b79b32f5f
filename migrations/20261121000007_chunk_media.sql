-- What the gateway learned from each chunk when it checked it (a GOP-aligned MPEG-TS segment):
-- its video's presentation span on the stream's clock, and its frames.
ALTER TABLE upload_chunks
    ADD COLUMN start_seconds double precision,
    ADD COLUMN end_seconds   double precision,
    ADD COLUMN frames        integer;
