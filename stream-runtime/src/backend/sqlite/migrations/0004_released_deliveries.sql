-- Deliveries given back by releases (handlers aborted by a shutdown). A claim's
-- attempt is `deliveries - released`; `deliveries` itself only grows, so the tokens
-- derived from it stay unique.
ALTER TABLE stream_pending ADD COLUMN released INTEGER NOT NULL DEFAULT 0;
