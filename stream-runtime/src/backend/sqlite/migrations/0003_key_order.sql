-- Migration 3: ordering by key (groups subscribed with `ordered = "key"`).
--
-- The ordered claim copies a message's key (its `x-stream-key` header) into its pending
-- entry, and claims an entry only when no earlier entry of its key is pending in the group.
-- Messages past the cursor are recorded first as waiting entries (token 0, no delivery,
-- deadline 0: claimable as soon as they are the earliest of their key). Unordered claims
-- leave `msg_key` NULL and never read it.
ALTER TABLE stream_pending ADD COLUMN msg_key TEXT;
CREATE INDEX stream_pending_by_key ON stream_pending (stream, group_name, msg_key, id)
    WHERE msg_key IS NOT NULL;
