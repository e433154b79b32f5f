-- Signed, expiring playback URLs for one video (VTX_SIGNED_PLAYBACK turns them on for all).
ALTER TABLE uploads ADD COLUMN signed_playback boolean NOT NULL DEFAULT false;
ALTER TABLE videos ADD COLUMN signed_playback boolean NOT NULL DEFAULT false;
