-- What was sent, one row per event (event_id is unique: a redelivered event
-- finds its row and sends nothing again).
CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    event_id   TEXT NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    channel    TEXT NOT NULL,
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    trace_id   TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX notifications_user ON notifications (user_id, created_at);
