-- The durable copy of every job's last state (README, "Durable state").
-- jobcast writes behind into it; workers may write it directly; a trigger tells
-- every gateway through NOTIFY jobcast_jobs when a snapshot changes.
CREATE TABLE IF NOT EXISTS jobs (
    id           text PRIMARY KEY,
    owner_id     text NOT NULL,
    status       text,
    snapshot     jsonb,
    seq          bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz
);

-- The retention sweep looks for old finished jobs only.
CREATE INDEX IF NOT EXISTS jobs_completed_at_idx ON jobs (completed_at)
    WHERE completed_at IS NOT NULL;

CREATE OR REPLACE FUNCTION jobcast_notify_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.snapshot IS DISTINCT FROM OLD.snapshot THEN
        PERFORM pg_notify('jobcast_jobs', NEW.id);
    END IF;
    RETURN NEW;
END;
$$;

DROP TRIGGER IF EXISTS jobs_notify ON jobs;
CREATE TRIGGER jobs_notify
    AFTER INSERT OR UPDATE OF snapshot ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobcast_notify_job();
