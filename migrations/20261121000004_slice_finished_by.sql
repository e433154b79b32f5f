-- Which worker finished each slice (operators, and tests that check work was spread).
ALTER TABLE slices ADD COLUMN finished_by text;
