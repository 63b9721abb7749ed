-- The whole schema: messages, groups and pending claims.
--
-- A claim's token is its pending entry's delivery count after the claim. An entry is created
-- once per group and message (when the group's cursor passes the message) and its delivery
-- count only grows (a release counts in `released` instead), so no token is ever issued twice
-- for one entry, by any process sharing the file.
CREATE TABLE stream_messages (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    stream     TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    headers    TEXT    NOT NULL,  -- JSON object of strings
    created_at INTEGER NOT NULL   -- milliseconds since the Unix epoch
);
-- Age trims seek by id too: ids are assigned under the write lock, so created_at grows
-- with the id, and no second index has to be written per message.
CREATE INDEX stream_messages_by_stream ON stream_messages (stream, id);
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
    deliveries INTEGER NOT NULL,  -- claims so far; only grows
    released   INTEGER NOT NULL DEFAULT 0,  -- claims given back by a release
    PRIMARY KEY (stream, group_name, id)
) WITHOUT ROWID;
CREATE INDEX stream_pending_by_deadline ON stream_pending (stream, group_name, deadline);
-- A claim is one INSERT ... ON CONFLICT DO UPDATE into stream_pending; inserting a
-- pending entry (a message handed to the group for the first time) advances the
-- group's cursor past it (never back).
CREATE TRIGGER stream_pending_advance_cursor AFTER INSERT ON stream_pending
BEGIN
    UPDATE stream_groups SET cursor = NEW.id
    WHERE stream = NEW.stream AND group_name = NEW.group_name AND cursor < NEW.id;
END;
