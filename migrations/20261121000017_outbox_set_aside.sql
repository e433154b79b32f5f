-- An outbox row the relay cannot read as a task (written by another version, or damaged) is
-- moved here with why, instead of blocking every row behind it; operators read it from here.
CREATE TABLE outbox_set_aside (
    id            bigint PRIMARY KEY,
    queue         text NOT NULL,
    payload       jsonb NOT NULL,
    error         text NOT NULL,
    created_at    timestamptz NOT NULL,
    set_aside_at  timestamptz NOT NULL DEFAULT now()
);
