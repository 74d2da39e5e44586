-- jobcast recipe: serve an application's own progress columns.
--
-- For an application that tracks jobs in its own table
--
--   public.jobs(id text primary key, project_id text not null,
--               user_id text not null, status text not null default 'pending',
--               progress_stage text, progress_current int, progress_total int,
--               progress_message text, progress_updated_at timestamptz)
--
-- written by its own SQL functions (update_job_progress, complete_job_progress,
-- error_job_progress, or plain UPDATEs). Apply it after jobcast's migrations:
--
--   psql "$DATABASE_URL" -f docs/recipes/progress-columns.sql
--   psql "$DATABASE_URL" -v jobcast_schema=other -f ...   (JOBCAST_PG_SCHEMA is not `jobcast`)
--
-- It adds a trigger on public.jobs that mirrors every change into jobcast's
-- table as a progress document. jobcast's own trigger then NOTIFYs the
-- gateways, so every watcher of the job (and of its project, the group) gets
-- the state live without a single Redis write. Applying it again replaces it.
--
-- Mapping:
--   owner_id <- user_id (the token `sub` allowed to watch the job)
--   group_id <- project_id
--   status   <- pending -> pending, running -> running, complete -> completed,
--               error -> failed, cancelled/canceled -> cancelled; others as they are
--   document  {job_id, owner_id, group_id, status, stage, current, total,
--              message, overall_progress (0-100, 2 decimals), updated_at, seq}
--              plus `error` (the message) on failure
--   seq      <- the change's time in milliseconds, and always above the row's
--               previous seq, so every change is news to the gateway's seq gate.

\set ON_ERROR_STOP on
\if :{?jobcast_schema}
\else
\set jobcast_schema jobcast
\endif

-- SECURITY DEFINER: the application's role writes public.jobs only; the
-- mirror writes jobcast's table with the rights of whoever applied this file.
-- The pinned search_path makes `jobs` below jobcast's table, never public.jobs.
CREATE OR REPLACE FUNCTION :"jobcast_schema".mirror_progress_columns() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = :"jobcast_schema", pg_catalog
AS $$
DECLARE
    mapped text := CASE lower(NEW.status)
        WHEN 'complete' THEN 'completed'
        WHEN 'completed' THEN 'completed'
        WHEN 'error' THEN 'failed'
        WHEN 'failed' THEN 'failed'
        WHEN 'cancelled' THEN 'cancelled'
        WHEN 'canceled' THEN 'cancelled'
        ELSE NEW.status
    END;
    terminal boolean := mapped IN ('completed', 'failed', 'cancelled');
    overall numeric := CASE
        WHEN mapped = 'completed' THEN 100
        WHEN NEW.progress_total > 0 THEN
            round(least(greatest(NEW.progress_current, 0), NEW.progress_total)::numeric
                  * 100 / NEW.progress_total, 2)
        ELSE 0
    END;
    changed_at timestamptz := coalesce(NEW.progress_updated_at, clock_timestamp());
    seq_now bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
    doc jsonb;
BEGIN
    doc := jsonb_build_object(
        'job_id', NEW.id,
        'owner_id', NEW.user_id,
        'group_id', NEW.project_id,
        'status', mapped,
        'stage', NEW.progress_stage,
        'current', NEW.progress_current,
        'total', NEW.progress_total,
        'message', NEW.progress_message,
        'overall_progress', overall,
        'updated_at', to_jsonb(changed_at)
    );
    IF mapped = 'failed' THEN
        doc := doc || jsonb_build_object('error', NEW.progress_message);
    END IF;
    -- jobs here is jobcast's table (search_path above).
    INSERT INTO jobs AS j (id, owner_id, group_id, status, snapshot, seq, completed_at, updated_at)
    VALUES (NEW.id, NEW.user_id, NEW.project_id, mapped,
            doc || jsonb_build_object('seq', seq_now), seq_now,
            CASE WHEN terminal THEN now() END, now())
    ON CONFLICT (id) DO UPDATE SET
        group_id     = EXCLUDED.group_id,
        status       = EXCLUDED.status,
        seq          = greatest(j.seq + 1, EXCLUDED.seq),
        snapshot     = EXCLUDED.snapshot
                       || jsonb_build_object('seq', greatest(j.seq + 1, EXCLUDED.seq)),
        completed_at = CASE WHEN terminal THEN coalesce(j.completed_at, now()) END,
        updated_at   = now();
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS jobcast_mirror_progress ON public.jobs;
CREATE TRIGGER jobcast_mirror_progress
    AFTER INSERT OR UPDATE ON public.jobs
    FOR EACH ROW EXECUTE FUNCTION :"jobcast_schema".mirror_progress_columns();
