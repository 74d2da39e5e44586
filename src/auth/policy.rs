//! May these claims see this job? Allowed where the token's `jobs` claim names
//! the job (or `*`), its `roles` include `admin`, or its `sub` is the job's owner
//! (the document's owner field, else Postgres `jobs.owner_id`). A job whose owner
//! is unknown is refused; an unknown job is `404` for a caller allowed by claim.

use crate::auth::Claims;
use crate::error::ApiError;
use crate::job::JobId;

/// What is known of the job when the decision is made.
pub struct JobFacts<'a> {
    pub known: bool,
    pub owner: Option<&'a str>,
}

pub fn authorize(claims: &Claims, job: &JobId, facts: JobFacts<'_>) -> Result<(), ApiError> {
    let by_claim = claims.names_job(job.as_str()) || claims.has_role("admin");
    if by_claim {
        return if facts.known {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!(
                "job {job} is not known to Redis or Postgres"
            )))
        };
    }
    match facts.owner {
        Some(owner) if owner == claims.sub => Ok(()),
        Some(_) => Err(ApiError::Forbidden(format!(
            "job {job} belongs to another user"
        ))),
        None => Err(ApiError::Forbidden(format!(
            "job {job} has no known owner; only tokens naming it may watch it"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub: &str, jobs: &[&str], roles: &[&str]) -> Claims {
        Claims {
            sub: sub.into(),
            exp: u64::MAX,
            nbf: None,
            iat: None,
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn job() -> JobId {
        JobId::parse("j1").unwrap()
    }
    fn known(owner: Option<&str>) -> JobFacts<'_> {
        JobFacts { known: true, owner }
    }

    #[test]
    fn owner_may_watch() {
        assert!(authorize(&claims("u1", &[], &[]), &job(), known(Some("u1"))).is_ok());
    }

    #[test]
    fn other_user_is_forbidden() {
        let e = authorize(&claims("u2", &[], &[]), &job(), known(Some("u1"))).unwrap_err();
        assert_eq!(e.code(), "forbidden");
    }

    #[test]
    fn unknown_owner_is_refused() {
        let e = authorize(&claims("u1", &[], &[]), &job(), known(None)).unwrap_err();
        assert_eq!(e.code(), "forbidden");
    }

    #[test]
    fn claims_and_admin_allow_and_unknown_job_is_404() {
        assert!(authorize(&claims("x", &["j1"], &[]), &job(), known(Some("u1"))).is_ok());
        assert!(authorize(&claims("x", &["*"], &[]), &job(), known(None)).is_ok());
        assert!(authorize(&claims("x", &[], &["admin"]), &job(), known(Some("u1"))).is_ok());
        let e = authorize(
            &claims("x", &[], &["admin"]),
            &job(),
            JobFacts {
                known: false,
                owner: None,
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "not_found");
    }

    #[test]
    fn unknown_job_for_plain_user_is_403_not_404() {
        // No information leak: without a claim, an unknown job looks like another's.
        let e = authorize(
            &claims("u1", &[], &[]),
            &job(),
            JobFacts {
                known: false,
                owner: None,
            },
        )
        .unwrap_err();
        assert_eq!(e.code(), "forbidden");
    }
}
