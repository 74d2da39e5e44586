-- A job's group (a project, a batch): the document's JOBCAST_GROUP_FIELD as
-- written behind, or the application's own value where it writes the row.
-- Group streams look jobs up by it.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS group_id text;

CREATE INDEX IF NOT EXISTS jobs_group_id_idx ON jobs (group_id)
    WHERE group_id IS NOT NULL;
