-- Instant publish of standard inputs: a chunk that can be played as it is was remuxed (no
-- re-encode) into the instant tier's HLS layout at upload; this is what that produced. NULL
-- when the chunk is not a standard input (or instant publish is off).
ALTER TABLE upload_chunks ADD COLUMN instant jsonb;
