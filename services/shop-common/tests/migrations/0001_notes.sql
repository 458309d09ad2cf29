CREATE TABLE notes (
    id      TEXT PRIMARY KEY,
    owner   TEXT NOT NULL,
    body    TEXT NOT NULL,
    cents   BIGINT NOT NULL CHECK (cents >= 0)
);
