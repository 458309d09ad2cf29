-- Accounts. Emails are stored trimmed and lower-cased, so uniqueness is
-- case-insensitive; passwords only as argon2id PHC strings.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
