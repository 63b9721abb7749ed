-- Migration 3 of the Postgres backend. `{S}` stands for the quoted schema name.
--
-- A release (a handler aborted by its consumer's shutdown) gives back the delivery its claim
-- counted, so the message keeps its attempt. Tokens come from a sequence, never from the
-- delivery count, so they stay unique.
CREATE OR REPLACE FUNCTION {S}.release(p_stream text, p_group text, p_ids bigint[], p_tokens bigint[])
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE {S}.pending p SET token = 0, deadline = clock_timestamp(),
            deliveries = greatest(p.deliveries - 1, 0)
        FROM {S}.groups g, {S}.streams s
        WHERE s.name = p_stream AND g.stream_id = s.stream_id AND g.name = p_group
          AND p.group_id = g.group_id AND p.token <> 0
          AND (p.msg_id, p.token) IN (SELECT * FROM unnest(p_ids, p_tokens));
    IF FOUND THEN
        PERFORM pg_notify('stream_runtime_wakeup', p_stream);
    END IF;
END
$fn$;
