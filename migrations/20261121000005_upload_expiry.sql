-- Abandoned upload sessions expire (their chunk objects are collected); clients can tell an
-- expired session from one they aborted.
ALTER TABLE uploads DROP CONSTRAINT uploads_state_check;
ALTER TABLE uploads ADD CONSTRAINT uploads_state_check
    CHECK (state IN ('open', 'completed', 'aborted', 'expired'));
CREATE INDEX uploads_open_expiry ON uploads (expires_at) WHERE state = 'open';
