-- A claim is one INSERT ... ON CONFLICT DO UPDATE into stream_pending; inserting a
-- pending entry (a message handed to the group for the first time) advances the group's
-- cursor past it. Never moves a cursor back, so claims that still update the cursor
-- themselves (earlier versions sharing the file) are unaffected.
CREATE TRIGGER stream_pending_advance_cursor AFTER INSERT ON stream_pending
BEGIN
    UPDATE stream_groups SET cursor = NEW.id
    WHERE stream = NEW.stream AND group_name = NEW.group_name AND cursor < NEW.id;
END;
