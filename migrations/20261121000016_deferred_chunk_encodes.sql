-- A chunk stored past its session's encode-ahead budget (VTX_ENCODE_AHEAD_SECS) waits as
-- 'deferred' and is queued when the upload completes: an upload that never completes costs at
-- most its budget of encoding.
ALTER TABLE upload_chunks DROP CONSTRAINT upload_chunks_encode_state_check;
ALTER TABLE upload_chunks ADD CONSTRAINT upload_chunks_encode_state_check
    CHECK (encode_state IN ('deferred', 'queued', 'running', 'done', 'failed'));
