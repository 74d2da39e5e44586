//! May these claims see this job? Allowed where the token's `jobs` claim names
//! the job (or `*`), its `roles` include `admin`, or its `sub` is the job's owner
//! (the document's owner field, else Postgres `jobs.owner_id`). A job whose owner
//! is unknown is refused; an unknown job is `404` for a caller allowed by claim.
//! Every other refusal is the same `403` with the same words, whether the job
//! exists or not, so a token cannot probe which job ids exist.
//!
//! A group stream is allowed where the token's `groups` claim names the group
//! (or `*`) or its `roles` include `admin`; nothing else, since the group (a
//! project) is the unit of access there, not the single job.

use crate::auth::{Claims, Role};
use crate::job::JobId;

/// What is known of the job when the decision is made.
pub struct JobFacts<'a> {
    pub known: bool,
    pub owner: Option<&'a str>,
}

/// Why these claims may not see or publish to a job; the HTTP edge turns each
/// into its status (`UnknownJob` 404, the rest 403).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    #[error("job {0} is not known to Redis or Postgres")]
    UnknownJob(JobId),
    /// The one answer for a job the caller may not see (another's, ownerless,
    /// or unknown alike).
    #[error(
        "this token may not watch job {0}: it is neither the owner nor named in the jobs claim"
    )]
    NotOwner(JobId),
    #[error("publishing needs a token with the publisher role")]
    NotPublisher,
    #[error(
        "a publisher token must name the jobs it may publish to in its jobs claim (\"*\" for all)"
    )]
    PublisherWithoutJobs,
    #[error("this publisher token may not publish to job {0}")]
    NotNamedForPublish(JobId),
    #[error("this token may not watch group {0}: it is not named in the groups claim")]
    NotInGroup(String),
}

impl Refusal {
    /// The `reason` label of `jobcast_auth_failures_total` for a watcher refused.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::UnknownJob(_) => "unknown_job",
            _ => "not_owner",
        }
    }
}

pub fn authorize(claims: &Claims, job: &JobId, facts: JobFacts<'_>) -> Result<(), Refusal> {
    let by_claim = claims.names_job(job.as_str()) || claims.has_role(Role::Admin);
    if by_claim {
        return if facts.known {
            Ok(())
        } else {
            Err(Refusal::UnknownJob(job.clone()))
        };
    }
    match facts.owner {
        Some(owner) if owner == claims.sub => Ok(()),
        _ => Err(Refusal::NotOwner(job.clone())),
    }
}

/// May these claims watch every job of `group`?
pub fn authorize_group(claims: &Claims, group: &str) -> Result<(), Refusal> {
    if claims.names_group(group) || claims.has_role(Role::Admin) {
        return Ok(());
    }
    Err(Refusal::NotInGroup(group.to_owned()))
}

/// May these claims publish to `job`? Role `publisher` and a `jobs` claim naming
/// the job (or `*`); a publisher token without `jobs` publishes nowhere.
pub fn authorize_publish(claims: &Claims, job: &JobId) -> Result<(), Refusal> {
    if !claims.has_role(Role::Publisher) {
        return Err(Refusal::NotPublisher);
    }
    if claims.jobs.is_empty() {
        return Err(Refusal::PublisherWithoutJobs);
    }
    if !claims.names_job(job.as_str()) {
        return Err(Refusal::NotNamedForPublish(job.clone()));
    }
    Ok(())
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
            groups: vec![],
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
        assert!(matches!(e, Refusal::NotOwner(_)), "{e:?}");
    }

    #[test]
    fn unknown_owner_is_refused() {
        let e = authorize(&claims("u1", &[], &[]), &job(), known(None)).unwrap_err();
        assert!(matches!(e, Refusal::NotOwner(_)), "{e:?}");
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
        assert_eq!(e, Refusal::UnknownJob(job()));
    }

    #[test]
    fn groups_are_allowed_by_the_groups_claim_or_admin_only() {
        let mut named = claims("u", &["*"], &[]);
        assert_eq!(
            authorize_group(&named, "p1").unwrap_err(),
            Refusal::NotInGroup("p1".into()),
            "a jobs claim says nothing of groups"
        );
        named.groups = vec!["p1".into()];
        assert!(authorize_group(&named, "p1").is_ok());
        assert!(authorize_group(&named, "p2").is_err());
        named.groups = vec!["*".into()];
        assert!(authorize_group(&named, "p2").is_ok());
        assert!(authorize_group(&claims("x", &[], &["admin"]), "p9").is_ok());
    }

    #[test]
    fn publishers_are_scoped_by_their_jobs_claim() {
        let ok = |jobs: &[&str], roles: &[&str]| {
            authorize_publish(&claims("svc", jobs, roles), &job()).is_ok()
        };
        assert!(ok(&["j1"], &["publisher"]));
        assert!(ok(&["*"], &["publisher"]));
        assert!(!ok(&[], &["publisher"]), "no jobs claim: nowhere");
        assert!(!ok(&["j2"], &["publisher"]));
        assert!(
            !ok(&["j1"], &["admin"]),
            "watching rights are not publishing rights"
        );
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
        assert!(matches!(e, Refusal::NotOwner(_)), "{e:?}");
    }
}
