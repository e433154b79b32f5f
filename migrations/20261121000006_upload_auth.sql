-- An upload session opened with an app's grant token can be used with that grant.
ALTER TABLE uploads ADD COLUMN grant_id uuid;
