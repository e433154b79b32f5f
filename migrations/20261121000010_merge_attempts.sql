-- Merge attempts are counted durably (they were counted in each worker's memory, so a merge
-- that killed its worker, or failed on several workers, was retried without bound).
ALTER TABLE job_tiers ADD COLUMN merge_attempts integer NOT NULL DEFAULT 0;
