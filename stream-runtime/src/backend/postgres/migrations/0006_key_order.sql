-- Migration 6: ordering by key (groups subscribed with `ordered = "key"`).
--
-- The ordered claim copies a message's key (its `x-stream-key` header) into its pending
-- entry and takes an entry only when no earlier entry of its key is pending in the group
-- (held, retrying or waiting). Messages past the cursor become waiting entries first
-- (token 0, no delivery, deadline -infinity: claimable as soon as they are the earliest of
-- their key). Unordered claims leave `msg_key` NULL and never read it.
ALTER TABLE {S}.pending ADD COLUMN msg_key text;
CREATE INDEX pending_by_key ON {S}.pending (group_id, msg_key, msg_id)
    WHERE msg_key IS NOT NULL;

-- Claims up to p_max messages of an ordered group, in one transaction: the group's row
-- lock serialises the ordered claims of the group (across processes), so two of them never
-- take two entries of one key. Expired claims are pending entries like the rest: the
-- earliest of its key, a crashed holder's claim comes back before the later ones.
CREATE FUNCTION {S}.claim_ordered(
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
    v_last   bigint;
    v_now    timestamptz := clock_timestamp();
    v_page   integer := greatest(p_max, 64);
    v_left   bigint := p_max;
    v_n      bigint;
    v_moved  bigint;
    v_pages  integer := 0;
    v_done   boolean := false;
BEGIN
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
    SELECT g.cursor_id INTO v_cursor FROM {S}.groups g
        WHERE g.group_id = v_group FOR NO KEY UPDATE;
    -- Claims of messages trimmed meanwhile.
    DELETE FROM {S}.pending p WHERE p.group_id = v_group AND p.msg_id < v_first;
    LOOP
        -- Due entries that are the earliest pending entry of their key.
        RETURN QUERY
        WITH heads AS (
            SELECT p.msg_id FROM {S}.pending p
            WHERE p.group_id = v_group AND p.deadline <= v_now
              AND (p.msg_key IS NULL OR NOT EXISTS (
                  SELECT 1 FROM {S}.pending q
                  WHERE q.group_id = v_group AND q.msg_key = p.msg_key
                    AND q.msg_id < p.msg_id))
            ORDER BY p.msg_id LIMIT v_left
        ), taken AS (
            UPDATE {S}.pending p
            SET token = nextval('{S}.claim_tokens'), consumer = p_consumer,
                deadline = v_now + p_visibility, deliveries = p.deliveries + 1,
                claimed_at = v_now
            FROM heads h WHERE p.group_id = v_group AND p.msg_id = h.msg_id
            RETURNING p.msg_id, p.deliveries, p.token
        )
        SELECT m.id, m.payload, m.headers, m.created_at, t.deliveries, t.token
        FROM taken t JOIN {S}.messages m ON m.stream_id = v_stream AND m.id = t.msg_id
        ORDER BY m.id;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_left := v_left - v_n;
        EXIT WHEN v_left <= 0 OR v_done OR v_pages >= 16;
        v_pages := v_pages + 1;
        -- A page of new messages becomes waiting entries; the cursor passes them. A stream's
        -- ids commit in order and this snapshot is taken after the group's lock, so the run
        -- past the cursor is gap-free.
        WITH fresh AS (
            SELECT m.id, m.headers->>'x-stream-key' AS k FROM {S}.messages m
            WHERE m.stream_id = v_stream AND m.id > v_cursor
            ORDER BY m.id LIMIT v_page
        ), ins AS (
            INSERT INTO {S}.pending
                (group_id, msg_id, token, consumer, deadline, deliveries, claimed_at, msg_key)
            SELECT v_group, f.id, 0, '', '-infinity', 0, v_now, f.k FROM fresh f
            RETURNING msg_id
        )
        SELECT count(*), max(ins.msg_id) INTO v_moved, v_last FROM ins;
        EXIT WHEN v_moved = 0;
        v_cursor := v_last;
        UPDATE {S}.groups g SET cursor_id = v_cursor WHERE g.group_id = v_group;
        v_done := v_moved < v_page;
    END LOOP;
END
$fn$;
