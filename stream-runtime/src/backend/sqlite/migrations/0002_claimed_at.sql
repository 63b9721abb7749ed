-- Migration 2: when each pending entry was last claimed, so the admin API reports the age
-- of the oldest pending claim (not of the oldest pending message).
--
-- The claim statement sets `claimed_at` on insert and on take-over; a retry or release
-- keeps it. Entries pending before this migration were claimed at some unknown time after
-- their message was appended: they get the message's `created_at` (an upper bound of their
-- age, what the admin API reported before).
ALTER TABLE stream_pending ADD COLUMN claimed_at INTEGER NOT NULL DEFAULT 0;  -- ms since the Unix epoch
UPDATE stream_pending SET claimed_at = COALESCE(
    (SELECT m.created_at FROM stream_messages m WHERE m.id = stream_pending.id), 0);
