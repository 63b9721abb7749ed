-- Age trims seek by id (ids are assigned under the write lock, so created_at grows
-- with the id): one index less to write per message.
DROP INDEX IF EXISTS stream_messages_by_age;
