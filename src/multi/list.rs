//! What a multi-job request asks for, parsed at the edge: the `?job=` list of
//! `/events`, `/ws` and `/poll` (each id validated like a single job's,
//! duplicates collapsed, at most `JOBCAST_MAX_JOBS_PER_STREAM`), the group
//! name of `/groups/{group}/…`, and the cursor the client hands back.

use crate::auth::credentials::query_params;
use crate::http::error::ApiError;
use crate::job::JobId;
use crate::multi::Refusal;
use crate::multi::cursor::StreamCursor;

/// The jobs of a `?job=` list, in the order first named, each once.
pub fn parse_jobs(query: &str, max: usize) -> Result<Vec<JobId>, Refusal> {
    let mut jobs: Vec<JobId> = Vec::new();
    for raw in query_params(query, "job") {
        let job = JobId::parse(&raw)
            .map_err(|e| Refusal::for_job(ApiError::BadRequest(e.to_string()), &raw))?;
        if !jobs.contains(&job) {
            if jobs.len() == max {
                return Err(Refusal::plain(ApiError::BadRequest(format!(
                    "at most {max} jobs on one stream (JOBCAST_MAX_JOBS_PER_STREAM)"
                ))));
            }
            jobs.push(job);
        }
    }
    if jobs.is_empty() {
        return Err(Refusal::plain(ApiError::BadRequest(
            "name at least one job: ?job=A&job=B".into(),
        )));
    }
    Ok(jobs)
}

/// A group name: the job id rule (1–200 of `A-Z a-z 0-9 . _ : -`), since it
/// is spliced into a Redis key and its keyspace channel the same way.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(JobId);

impl GroupName {
    pub fn parse(raw: &str) -> Result<GroupName, ApiError> {
        JobId::parse(raw).map(GroupName).map_err(|_| {
            ApiError::BadRequest(format!(
                "group name must be 1-{} characters from A-Z a-z 0-9 . _ : -",
                crate::job::MAX_JOB_ID_LEN
            ))
        })
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Display for GroupName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::borrow::Borrow<str> for GroupName {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

/// The cursor a client resumes with: `Last-Event-ID` (EventSource's own
/// reconnects) first, else `?cursor=`. None or junk reads as empty.
pub fn resume_cursor(last_event_id: Option<&str>, query: &str) -> StreamCursor {
    last_event_id
        .map(str::to_owned)
        .or_else(|| query_params(query, "cursor").next())
        .map(|raw| StreamCursor::decode(&raw))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(jobs: &[JobId]) -> Vec<&str> {
        jobs.iter().map(JobId::as_str).collect()
    }

    #[test]
    fn a_list_keeps_the_first_order_and_collapses_duplicates() {
        let jobs = parse_jobs("job=b&x=1&job=a&job=b&job=c%3A1", 10).unwrap();
        assert_eq!(ids(&jobs), ["b", "a", "c:1"]);
    }

    #[test]
    fn a_bad_id_is_refused_by_name() {
        let e = parse_jobs("job=ok&job=no%20pe", 10).unwrap_err();
        assert_eq!(e.error.code(), "bad_request");
        assert_eq!(e.job.as_deref(), Some("no pe"));
    }

    #[test]
    fn empty_and_oversized_lists_are_refused() {
        assert_eq!(parse_jobs("", 10).unwrap_err().error.code(), "bad_request");
        assert_eq!(
            parse_jobs("x=1", 10).unwrap_err().error.code(),
            "bad_request"
        );
        let three = "job=a&job=b&job=c";
        assert!(parse_jobs(three, 3).is_ok());
        assert!(
            parse_jobs(&format!("{three}&job=a"), 3).is_ok(),
            "duplicates do not count"
        );
        let e = parse_jobs(&format!("{three}&job=d"), 3).unwrap_err();
        assert!(e.error.to_string().contains("at most 3"));
    }

    #[test]
    fn group_names_follow_the_job_id_rule() {
        assert_eq!(
            GroupName::parse("proj-1.a:b").unwrap().as_str(),
            "proj-1.a:b"
        );
        for bad in ["", "a*", "a b", &"g".repeat(201)] {
            assert!(GroupName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_header_cursor_wins_over_the_query() {
        let mut c = StreamCursor::default();
        let tag = crate::multi::cursor::JobTag::of(&JobId::parse("a").unwrap());
        c.saw(tag, "5", false);
        let text = c.encode();
        assert!(resume_cursor(Some(&text), "cursor=junk").has_seen(tag, "5"));
        assert!(resume_cursor(None, &format!("cursor={text}")).has_seen(tag, "5"));
        assert!(resume_cursor(None, "").is_empty());
    }
}
