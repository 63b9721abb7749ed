-- Migration 1 of the Postgres backend. `{S}` stands for the quoted schema name.
-- Applied once per schema, under an advisory lock, in one transaction.

-- One row per stream. Appends lock it (UPDATE), so a stream's ids are assigned and
-- committed in order: a reader never sees id N+1 before id N has committed.
CREATE TABLE {S}.streams (
    stream_id bigserial PRIMARY KEY,
    name      text   NOT NULL UNIQUE,
    last_id   bigint NOT NULL DEFAULT 0,  -- the last id handed out
    first_id  bigint NOT NULL DEFAULT 1   -- the lowest id still retained (last_id + 1 when empty)
);

CREATE TABLE {S}.messages (
    stream_id  bigint      NOT NULL REFERENCES {S}.streams ON DELETE CASCADE,
    id         bigint      NOT NULL,
    payload    bytea       NOT NULL,
    headers    jsonb       NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (stream_id, id)
);

CREATE TABLE {S}.groups (
    group_id  bigserial PRIMARY KEY,
    stream_id bigint NOT NULL REFERENCES {S}.streams ON DELETE CASCADE,
    name      text   NOT NULL,
    cursor_id bigint NOT NULL,  -- the last id handed to this group
    UNIQUE (stream_id, name)
);

-- Claimed and not yet settled messages of a group. token = 0: nobody holds the claim
-- (after a retry or a release); claimable again once the deadline passed.
CREATE TABLE {S}.pending (
    group_id   bigint      NOT NULL REFERENCES {S}.groups ON DELETE CASCADE,
    msg_id     bigint      NOT NULL,
    token      bigint      NOT NULL,
    consumer   text        NOT NULL,
    deadline   timestamptz NOT NULL,
    deliveries integer     NOT NULL,
    PRIMARY KEY (group_id, msg_id)
);
CREATE INDEX pending_deadline ON {S}.pending (group_id, deadline);

CREATE SEQUENCE {S}.claim_tokens;

-- Appends a batch, trims the stream exactly, wakes listeners; returns the new ids in order.
CREATE FUNCTION {S}.append(
    p_stream text, p_payloads bytea[], p_headers jsonb[], p_max_len bigint, p_max_age interval
) RETURNS SETOF bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v_n      bigint := coalesce(cardinality(p_payloads), 0);
    v_stream bigint;
    v_last   bigint;
    v_first  bigint;
    v_cut    bigint := 0;
    v_keep   bigint;
BEGIN
    IF v_n = 0 THEN
        RETURN;
    END IF;
    -- Lock the stream's row: appends to one stream are serialised until commit.
    LOOP
        UPDATE {S}.streams s SET last_id = s.last_id + v_n
            WHERE s.name = p_stream
            RETURNING s.stream_id, s.last_id, s.first_id INTO v_stream, v_last, v_first;
        EXIT WHEN FOUND;
        INSERT INTO {S}.streams (name) VALUES (p_stream) ON CONFLICT (name) DO NOTHING;
    END LOOP;

    -- created_at is taken after the lock, so it grows with the id.
    INSERT INTO {S}.messages (stream_id, id, payload, headers, created_at)
        SELECT v_stream, v_last - v_n + m.ord, m.payload, m.headers, clock_timestamp()
        FROM unnest(p_payloads, p_headers) WITH ORDINALITY AS m(payload, headers, ord);

    IF p_max_len > 0 THEN
        v_cut := greatest(v_cut, v_last - p_max_len);
    END IF;
    IF p_max_age > interval '0' THEN
        SELECT m.id INTO v_keep FROM {S}.messages m
            WHERE m.stream_id = v_stream AND m.id >= v_first
              AND m.created_at >= clock_timestamp() - p_max_age
            ORDER BY m.id LIMIT 1;
        v_cut := greatest(v_cut, coalesce(v_keep - 1, v_last));
    END IF;
    IF v_cut >= v_first THEN
        DELETE FROM {S}.messages m
            WHERE m.stream_id = v_stream AND m.id >= v_first AND m.id <= v_cut;
        DELETE FROM {S}.pending p USING {S}.groups g
            WHERE g.stream_id = v_stream AND p.group_id = g.group_id AND p.msg_id <= v_cut;
        UPDATE {S}.streams SET first_id = v_cut + 1 WHERE stream_id = v_stream;
    END IF;

    PERFORM pg_notify('stream_runtime_wakeup', p_stream);
    RETURN QUERY SELECT generate_series(v_last - v_n + 1, v_last);
END
$fn$;

-- Creates a group unless it exists. p_start: 'latest', 'earliest' or 'id' (then p_from).
CREATE FUNCTION {S}.ensure_group(p_stream text, p_group text, p_start text, p_from bigint)
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO {S}.streams (name) VALUES (p_stream) ON CONFLICT (name) DO NOTHING;
    INSERT INTO {S}.groups (stream_id, name, cursor_id)
        SELECT s.stream_id, p_group,
               CASE p_start WHEN 'latest' THEN s.last_id
                            WHEN 'earliest' THEN s.first_id - 1
                            ELSE p_from END
        FROM {S}.streams s WHERE s.name = p_stream
        ON CONFLICT (stream_id, name) DO NOTHING;
END
$fn$;

-- Claims up to p_max messages: expired pending ones first, then new ones past the cursor.
CREATE FUNCTION {S}.claim(
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

-- Atomically removes a held claim and appends the message to stream p_to.
-- Returns the new id, or NULL when the claim was no longer held.
CREATE FUNCTION {S}.dead_letter(
    p_stream text, p_group text, p_id bigint, p_token bigint,
    p_to text, p_payload bytea, p_headers jsonb
) RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    v_id bigint;
BEGIN
    DELETE FROM {S}.pending p USING {S}.groups g, {S}.streams s
        WHERE s.name = p_stream AND g.stream_id = s.stream_id AND g.name = p_group
          AND p.group_id = g.group_id AND p.msg_id = p_id
          AND p.token = p_token AND p.token <> 0;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT max(a) INTO v_id
        FROM {S}.append(p_to, ARRAY[p_payload], ARRAY[p_headers], 0, interval '0') AS a;
    RETURN v_id;
END
$fn$;
