-- Messaging tables a service with events keeps in its own database, beside
-- its own tables (their own migration history: `_shop_messaging_migrations`).

-- The outbox: messages written in the same transaction as the change they
-- announce, published by the relay, marked once the broker confirmed them.
CREATE TABLE outbox (
    id           TEXT PRIMARY KEY,
    exchange     TEXT NOT NULL,
    routing_key  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    headers      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    published_at BIGINT
);
CREATE INDEX outbox_pending ON outbox (published_at, created_at, id);

-- Which replica relays: one at a time, for as long as it renews its lease.
CREATE TABLE outbox_lease (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- Messages a consumer has handled, so a redelivered copy changes nothing.
CREATE TABLE processed_messages (
    consumer     TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
