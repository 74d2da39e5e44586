//! `LISTEN jobcast_jobs`: Postgres as a push source. Placeholder until the
//! durable-state work lands.
