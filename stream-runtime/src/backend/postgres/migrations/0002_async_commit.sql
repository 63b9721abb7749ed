-- Migration 2 of the Postgres backend. `{S}` stands for the quoted schema name.
--
-- Claims, acks, retries and releases commit asynchronously: each sets
-- `synchronous_commit = off` for its own transaction only (`set_config(..., true)`, i.e.
-- `SET LOCAL`; it ends with the transaction, so the pooled connection's next transaction is
-- back at the server's setting). Such a commit returns before its WAL is flushed; a server
-- crash may lose the last ones (at most about 3 x wal_writer_delay), which only makes a
-- message be delivered again: at-least-once allows that. A later synchronous commit flushes
-- every earlier WAL record, so nothing durable can depend on a lost one. `append` and
-- `dead_letter` keep the server's setting (normally synchronous): a returned publish is
-- durable (S17) and a dead letter is never lost (S12).
--
-- The setting must not be a function's `SET` clause: that is undone when the function
-- returns, before the commit. `set_config(..., true)` inside the body lasts until commit.

-- Claims up to p_max messages: expired pending ones first, then new ones past the cursor.
CREATE OR REPLACE FUNCTION {S}.claim(
    p_stream text, p_group text, p_consumer text, p_max integer, p_visibility interval
) RETURNS TABLE (
    r_id bigint, r_payload bytea, r_headers jsonb, r_created_at timestamptz,
    r_deliveries integer, r_token bigint
) LANGUAGE plpgsql AS $fn$
DECLARE
    v_stream bigint;
    v_first  bigint;
    v_group  bigint;
    v_cursor bigint;
    v_now    timestamptz := clock_timestamp();
    v_n      bigint;
    v_left   bigint := p_max;
BEGIN
    -- Asynchronous commit for this transaction only (see the top of this file).
    PERFORM set_config('synchronous_commit', 'off', true);
    SELECT s.stream_id, s.first_id INTO v_stream, v_first
        FROM {S}.streams s WHERE s.name = p_stream;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT g.group_id INTO v_group
        FROM {S}.groups g WHERE g.stream_id = v_stream AND g.name = p_group;
    IF NOT FOUND OR p_max <= 0 THEN
        RETURN;
    END IF;

    -- Claims of messages trimmed while they were being claimed.
    DELETE FROM {S}.pending p WHERE p.group_id = v_group AND p.msg_id < v_first;

    -- Expired claims, skipping those another worker of the group is taking right now.
    RETURN QUERY
    WITH due AS (
        SELECT p.msg_id FROM {S}.pending p
        WHERE p.group_id = v_group AND p.deadline <= v_now
        ORDER BY p.msg_id LIMIT p_max
        FOR UPDATE SKIP LOCKED
    ), taken AS (
        UPDATE {S}.pending p
        SET token = nextval('{S}.claim_tokens'), consumer = p_consumer,
            deadline = v_now + p_visibility, deliveries = p.deliveries + 1
        FROM due WHERE p.group_id = v_group AND p.msg_id = due.msg_id
        RETURNING p.msg_id, p.deliveries, p.token
    )
    SELECT m.id, m.payload, m.headers, m.created_at, t.deliveries, t.token
    FROM taken t JOIN {S}.messages m ON m.stream_id = v_stream AND m.id = t.msg_id
    ORDER BY m.id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    v_left := v_left - v_n;
    IF v_left <= 0 THEN
        RETURN;
    END IF;

    -- New messages: the group's row lock serialises its cursor. This statement's snapshot
    -- is taken after the lock, and a stream's ids commit in order, so what it sees past the
    -- cursor is a gap-free run.
    SELECT g.cursor_id INTO v_cursor FROM {S}.groups g
        WHERE g.group_id = v_group FOR NO KEY UPDATE;
    RETURN QUERY
    WITH fresh AS (
        SELECT m.id, m.payload, m.headers, m.created_at FROM {S}.messages m
        WHERE m.stream_id = v_stream AND m.id > v_cursor
        ORDER BY m.id LIMIT v_left
    ), ins AS (
        INSERT INTO {S}.pending (group_id, msg_id, token, consumer, deadline, deliveries)
        SELECT v_group, f.id, nextval('{S}.claim_tokens'), p_consumer, v_now + p_visibility, 1
        FROM fresh f
        RETURNING msg_id, token
    ), advance AS (
        UPDATE {S}.groups g SET cursor_id = (SELECT max(f.id) FROM fresh f)
        WHERE g.group_id = v_group AND EXISTS (SELECT 1 FROM fresh)
    )
    SELECT f.id, f.payload, f.headers, f.created_at, 1, i.token
    FROM fresh f JOIN ins i ON i.msg_id = f.id
    ORDER BY f.id;
END
$fn$;

-- Acknowledges held claims (ids and tokens as two arrays of equal length).
CREATE FUNCTION {S}.ack(p_stream text, p_group text, p_ids bigint[], p_tokens bigint[])
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    DELETE FROM {S}.pending p USING {S}.groups g, {S}.streams s
        WHERE s.name = p_stream AND g.stream_id = s.stream_id AND g.name = p_group
          AND p.group_id = g.group_id AND p.token <> 0
          AND (p.msg_id, p.token) IN (SELECT * FROM unnest(p_ids, p_tokens));
END
$fn$;

-- Gives a held claim up until now + p_delay. Returns whether the claim was still held.
CREATE FUNCTION {S}.retry(
    p_stream text, p_group text, p_id bigint, p_token bigint, p_delay interval
) RETURNS boolean LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE {S}.pending p SET token = 0, deadline = clock_timestamp() + p_delay
        FROM {S}.groups g, {S}.streams s
        WHERE s.name = p_stream AND g.stream_id = s.stream_id AND g.name = p_group
          AND p.group_id = g.group_id
          AND p.msg_id = p_id AND p.token = p_token AND p.token <> 0;
    RETURN FOUND;
END
$fn$;

-- Makes held claims claimable at once and wakes the stream's listeners if any was held.
CREATE FUNCTION {S}.release(p_stream text, p_group text, p_ids bigint[], p_tokens bigint[])
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE {S}.pending p SET token = 0, deadline = clock_timestamp()
        FROM {S}.groups g, {S}.streams s
        WHERE s.name = p_stream AND g.stream_id = s.stream_id AND g.name = p_group
          AND p.group_id = g.group_id AND p.token <> 0
          AND (p.msg_id, p.token) IN (SELECT * FROM unnest(p_ids, p_tokens));
    IF FOUND THEN
        PERFORM pg_notify('stream_runtime_wakeup', p_stream);
    END IF;
END
$fn$;
