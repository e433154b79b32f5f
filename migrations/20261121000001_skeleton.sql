-- Uploads, videos, jobs and renditions: the durable truth of vtx. Append-only: never edit an
-- applied migration, add a new one.

CREATE TABLE uploads (
    id            uuid PRIMARY KEY,
    state         text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'completed', 'aborted')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    completed_at  timestamptz
);

CREATE TABLE upload_chunks (
    upload_id   uuid NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    idx         integer NOT NULL CHECK (idx >= 0),
    size_bytes  bigint NOT NULL CHECK (size_bytes > 0),
    sha256      text NOT NULL,
    object_key  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, idx)
);

CREATE TABLE videos (
    id              uuid PRIMARY KEY,
    upload_id       uuid UNIQUE REFERENCES uploads (id),
    state           text NOT NULL CHECK (state IN ('processing', 'ready', 'failed')),
    source_key      text NOT NULL,
    source_bytes    bigint NOT NULL,
    width           integer,
    height          integer,
    frames          bigint,
    duration_ms     bigint,
    error_code      text,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    video_id        uuid NOT NULL REFERENCES videos (id),
    state           text NOT NULL CHECK (state IN ('queued', 'scheduled', 'running', 'succeeded', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    error_code      text,
    error_message   text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    scheduled_at    timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_video_id ON jobs (video_id);

CREATE TABLE renditions (
    video_id      uuid NOT NULL REFERENCES videos (id),
    job_id        uuid NOT NULL REFERENCES jobs (id),
    name          text NOT NULL,
    container     text NOT NULL CHECK (container IN ('mp4')),
    object_key    text NOT NULL,
    width         integer NOT NULL,
    height        integer NOT NULL,
    frames        bigint NOT NULL,
    duration_ms   bigint NOT NULL,
    size_bytes    bigint NOT NULL,
    bitrate       bigint NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (video_id, name, container)
);

-- Transactional outbox: a message is written in the same transaction as the state it announces,
-- and a relay publishes it afterwards, so the database and the broker can never disagree.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    queue       text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vtx_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
