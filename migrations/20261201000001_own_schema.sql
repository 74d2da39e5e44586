-- jobcast's tables live in their own schema (JOBCAST_PG_SCHEMA): jobcast runs
-- its migrations with search_path set to it, so the first migration created
-- its table, function and trigger there. A database that earlier versions
-- migrated in `public` (their record is in public._sqlx_migrations) has that
-- table moved here instead: rows, indexes and trigger go with it, the trigger
-- is pointed at this schema's NOTIFY function and the old function is dropped.
-- An application's own `public.jobs` (no jobcast record, other columns) is
-- never touched.
DO $$
DECLARE
    target text := current_schema();
    jobcast_columns int;
    fresh_has_rows boolean;
BEGIN
    IF target = 'public' OR to_regclass('public._sqlx_migrations') IS NULL
       OR to_regclass('public.jobs') IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public._sqlx_migrations WHERE version = 20261123000001) THEN
        RETURN;
    END IF;
    SELECT count(*) INTO jobcast_columns FROM information_schema.columns
    WHERE table_schema = 'public' AND table_name = 'jobs'
      AND column_name IN ('id', 'owner_id', 'status', 'snapshot', 'seq', 'completed_at');
    IF jobcast_columns <> 6 THEN
        RETURN;
    END IF;
    -- The table the first migration just made here is empty unless this
    -- schema was in use already; then it stays and nothing is moved.
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I.jobs)', target) INTO fresh_has_rows;
    IF fresh_has_rows THEN
        RAISE WARNING 'jobcast: both public.jobs and %.jobs hold jobs; public.jobs is left as it is', target;
        RETURN;
    END IF;
    EXECUTE format('DROP TABLE %I.jobs', target);
    EXECUTE format('ALTER TABLE public.jobs SET SCHEMA %I', target);
    EXECUTE format('DROP TRIGGER IF EXISTS jobs_notify ON %I.jobs', target);
    EXECUTE format(
        'CREATE TRIGGER jobs_notify AFTER INSERT OR UPDATE OF snapshot ON %I.jobs '
        'FOR EACH ROW EXECUTE FUNCTION %I.jobcast_notify_job()', target, target);
    DROP FUNCTION IF EXISTS public.jobcast_notify_job();
    DELETE FROM public._sqlx_migrations WHERE version = 20261123000001;
    IF NOT EXISTS (SELECT 1 FROM public._sqlx_migrations) THEN
        DROP TABLE public._sqlx_migrations;
    END IF;
END;
$$;
