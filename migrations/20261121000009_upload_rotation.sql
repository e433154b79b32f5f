-- MPEG-TS chunks cannot carry a display rotation (MP4's display matrix); the client declares
-- the source's rotation when it opens the session, and planning applies it.
ALTER TABLE uploads ADD COLUMN rotation integer CHECK (rotation IN (0, 90, 180, 270));
