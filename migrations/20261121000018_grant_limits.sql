-- Per-grant limits count a grant's sessions (open ones, and those opened in the last minute).
CREATE INDEX uploads_grant_created ON uploads (grant_id, created_at) WHERE grant_id IS NOT NULL;
