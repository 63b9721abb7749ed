-- Messages, groups, pending claims, the claim-token counter.
CREATE TABLE stream_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    headers    TEXT    NOT NULL,  -- JSON object of strings
    created_at INTEGER NOT NULL   -- milliseconds since the Unix epoch
);
CREATE INDEX stream_messages_by_stream ON stream_messages (stream, id);
CREATE INDEX stream_messages_by_age ON stream_messages (stream, created_at);
CREATE TABLE stream_groups (
    stream     TEXT    NOT NULL,
    group_name TEXT    NOT NULL,
    cursor     INTEGER NOT NULL,  -- the last message id handed out to the group
    PRIMARY KEY (stream, group_name)
) WITHOUT ROWID;
CREATE TABLE stream_pending (
    stream     TEXT    NOT NULL,
    group_name TEXT    NOT NULL,
    id         INTEGER NOT NULL,  -- stream_messages.id
    token      INTEGER NOT NULL,  -- the current claim's token; 0 while nobody holds it
    deadline   INTEGER NOT NULL,  -- claimable again from then (ms since the Unix epoch)
    deliveries INTEGER NOT NULL,
    PRIMARY KEY (stream, group_name, id)
) WITHOUT ROWID;
CREATE INDEX stream_pending_by_deadline ON stream_pending (stream, group_name, deadline);
CREATE TABLE stream_tokens (
    only_row   INTEGER PRIMARY KEY CHECK (only_row = 1),
    last_token INTEGER NOT NULL
);
INSERT INTO stream_tokens (only_row, last_token) VALUES (1, 0);
