-- One name for transcoding while the upload arrives: "live ingest".
ALTER TABLE jobs RENAME COLUMN pipelined TO live_ingest;
