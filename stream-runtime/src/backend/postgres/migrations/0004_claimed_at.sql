-- Migration 4 of the Postgres backend. `{S}` stands for the quoted schema name.
--
-- When each pending entry was last claimed, so the admin API reports the age of the oldest
-- pending claim (not of the oldest pending message). `claim` sets it on insert and on
-- take-over; a retry or release keeps it. Entries pending before this migration were
-- claimed at some unknown time after their message was appended: they get the message's
-- `created_at` (an upper bound of their age, what the admin API reported before).
ALTER TABLE {S}.pending ADD COLUMN claimed_at timestamptz;
UPDATE {S}.pending p SET claimed_at = coalesce(
    (SELECT m.created_at FROM {S}.messages m, {S}.groups g
     WHERE g.group_id = p.group_id AND m.stream_id = g.stream_id AND m.id = p.msg_id),
    clock_timestamp());
ALTER TABLE {S}.pending ALTER COLUMN claimed_at SET NOT NULL;

-- As in migration 2, with `claimed_at` set; that migration's comments hold.
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
            deadline = v_now + p_visibility, deliveries = p.deliveries + 1,
            claimed_at = v_now
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
        INSERT INTO {S}.pending
            (group_id, msg_id, token, consumer, deadline, deliveries, claimed_at)
        SELECT v_group, f.id, nextval('{S}.claim_tokens'), p_consumer, v_now + p_visibility, 1,
            v_now
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
