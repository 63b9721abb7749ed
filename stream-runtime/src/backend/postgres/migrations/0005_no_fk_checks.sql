-- Migration 5 of the Postgres backend. `{S}` stands for the quoted schema name.
--
-- Appends and claims no longer pay a foreign-key check per row. Each check (a `FOR KEY
-- SHARE` lookup of the parent row for every inserted row) was about half of the server's
-- work in a batch append, and they guarded nothing: messages are only inserted by `append`,
-- which has just locked (or created) their stream's row; pending entries only by `claim`,
-- which has just read their group's row; and neither stream nor group rows are ever
-- deleted, so the cascades never ran either.
ALTER TABLE {S}.messages DROP CONSTRAINT IF EXISTS messages_stream_id_fkey;
ALTER TABLE {S}.pending DROP CONSTRAINT IF EXISTS pending_group_id_fkey;
