-- The gateway's retention task deletes user events by start time, in batches, as it does
-- samples (sample_start_at, 0001); without this index every batch would scan the table.
CREATE INDEX user_event_start_at ON user_event (start_at);
