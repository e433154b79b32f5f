-- tus 1.0 uploads share the upload tables: a tus upload declares its length up front, and each
-- PATCH body is stored as the next part (upload_chunks row) of the upload.
ALTER TABLE uploads
    ADD COLUMN protocol       text NOT NULL DEFAULT 'chunks' CHECK (protocol IN ('chunks', 'tus')),
    ADD COLUMN upload_length  bigint CHECK (upload_length >= 0),
    ADD COLUMN metadata       text;
