//! One driver for every task run from a delivery: claim -> (heartbeat while it runs) -> run ->
//! complete, or fail by one retry policy. The task kinds (the scheduler's planning; a worker's
//! slices, chunk encodes, merges, extreme merges, the publication of a live-ingest fast tier and
//! its MP4 mux) differ only in what they claim, run and record ([`LeasedTask`]); what becomes
//! of a failure is decided by one pure function ([`decide`]).

use std::future::Future;
use std::time::Duration;

use vtx_domain::ErrorCode;

use crate::broker::Outcome;

/// How many times a task may run before it gives up (`VTX_MAX_ATTEMPTS`): the one retry
/// policy every task kind follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
}

/// Why a run did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Running again cannot help (the input's fault, the deadline, outputs that do not match
    /// the source): give up now, with this code.
    Fatal { code: ErrorCode, message: String },
    /// Another attempt may succeed (storage, database, a bug that may not repeat).
    Retryable(String),
    /// Another worker holds the task now: it is theirs.
    LeaseLost,
}

/// What becomes of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Ack,
    /// Run it again later.
    Retry,
    /// Record the failure for good, then settle the delivery as `then` (ack for a fatal
    /// failure; dead-letter when the attempts ran out).
    GiveUp {
        code: ErrorCode,
        message: String,
        then: Outcome,
    },
}

/// A claimed attempt (1-based) past the policy's last gives up before it runs: a delivery that
/// kept failing without ever recording why (its worker died each time).
pub fn before_run(what: &str, attempt: u32, policy: RetryPolicy) -> Option<Decision> {
    (attempt > policy.max_attempts).then(|| Decision::GiveUp {
        code: ErrorCode::RetriesExhausted,
        message: format!("{what} gave up after {} attempts", attempt - 1),
        then: Outcome::DeadLetter,
    })
}

/// What happens after attempt `attempt` (1-based) ended with `result`.
pub fn decide(
    what: &str,
    attempt: u32,
    result: Result<(), Failure>,
    policy: RetryPolicy,
) -> Decision {
    match result {
        Ok(()) | Err(Failure::LeaseLost) => Decision::Ack,
        Err(Failure::Fatal { code, message }) => Decision::GiveUp {
            code,
            message,
            then: Outcome::Ack,
        },
        Err(Failure::Retryable(e)) if attempt >= policy.max_attempts => Decision::GiveUp {
            code: ErrorCode::RetriesExhausted,
            message: format!("{what} gave up after {attempt} attempts: {e}"),
            then: Outcome::DeadLetter,
        },
        Err(Failure::Retryable(_)) => Decision::Retry,
    }
}

/// One kind of task, as the driver runs it.
pub trait LeasedTask: Sync {
    /// What a claim hands the run.
    type Claim: Sync;
    /// What a successful run hands the completion.
    type Done: Send;

    /// Names the task in logs and failure messages ("slice 3", "merge").
    fn what(&self) -> String;
    /// Takes the task: `None` when there is nothing to do (done, held by a live lease, or its
    /// job ended).
    fn claim(&self) -> impl Future<Output = sqlx::Result<Option<Self::Claim>>> + Send;
    /// Which attempt this claim is (1-based).
    fn attempt(claim: &Self::Claim) -> u32;
    /// The lease to renew while the task runs, if it has one (a merge has none: its tier's
    /// state admits one merge at a time).
    fn lease(&self) -> Option<Duration> {
        None
    }
    /// Renews the lease: `false` when another worker holds it now.
    fn renew(&self) -> impl Future<Output = sqlx::Result<bool>> + Send {
        async { Ok(true) }
    }
    fn run(&self, claim: &Self::Claim) -> impl Future<Output = Result<Self::Done, Failure>> + Send;
    /// Records the result; must be idempotent (a duplicate delivery completes again).
    fn complete(
        &self,
        claim: &Self::Claim,
        done: Self::Done,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
    /// Records a failure for good.
    fn give_up(
        &self,
        code: ErrorCode,
        message: &str,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// Runs one delivery of `task` to its outcome.
pub async fn drive<T: LeasedTask>(task: &T, policy: RetryPolicy) -> Outcome {
    let what = task.what();
    let claim = match task.claim().await {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::debug!("{what}: done, held by a live lease, or its job ended: nothing to do");
            return Outcome::Ack;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim the {what}; will retry");
            return Outcome::Retry;
        }
    };
    let attempt = T::attempt(&claim);
    if let Some(decision) = before_run(&what, attempt, policy) {
        return settle(task, decision).await;
    }
    let run = task.run(&claim);
    let result = match task.lease() {
        Some(lease) => tokio::select! {
            r = run => r,
            () = lease_lost(task, lease) => Err(Failure::LeaseLost),
        },
        None => run.await,
    };
    let result = match result {
        Ok(done) => match task.complete(&claim, done).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot record the {what}; will retry");
                return Outcome::Retry;
            }
        },
        Err(f) => Err(f),
    };
    match &result {
        Err(Failure::LeaseLost) => tracing::warn!("lease lost; another worker has the {what}"),
        Err(Failure::Retryable(e)) => tracing::warn!(attempt, error = %e, "{what} failed"),
        _ => {}
    }
    settle(task, decide(&what, attempt, result, policy)).await
}

/// Renews the lease every third of it; returns once another worker holds it.
async fn lease_lost<T: LeasedTask>(task: &T, lease: Duration) {
    loop {
        tokio::time::sleep(lease / 3).await;
        match task.renew().await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

async fn settle<T: LeasedTask>(task: &T, decision: Decision) -> Outcome {
    match decision {
        Decision::Ack => Outcome::Ack,
        Decision::Retry => Outcome::Retry,
        Decision::GiveUp {
            code,
            message,
            then,
        } => {
            tracing::warn!(%code, message, "giving up");
            metrics::counter!("vtx_failures_total", "code" => code.as_str()).increment(1);
            match task.give_up(code, &message).await {
                Ok(()) => then,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot record the failure; will retry");
                    Outcome::Retry
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy { max_attempts: 3 };

    fn retryable() -> Result<(), Failure> {
        Err(Failure::Retryable("storage: timed out".into()))
    }

    #[test]
    fn every_result_at_every_attempt_has_one_decision() {
        let fatal = || {
            Err(Failure::Fatal {
                code: ErrorCode::CorruptStream,
                message: "damaged".into(),
            })
        };
        let give_up_fatal = Decision::GiveUp {
            code: ErrorCode::CorruptStream,
            message: "damaged".into(),
            then: Outcome::Ack,
        };
        let exhausted = |n: u32| Decision::GiveUp {
            code: ErrorCode::RetriesExhausted,
            message: format!("slice 2 gave up after {n} attempts: storage: timed out"),
            then: Outcome::DeadLetter,
        };
        let table: Vec<(u32, Result<(), Failure>, Decision)> = vec![
            (1, Ok(()), Decision::Ack),
            (3, Ok(()), Decision::Ack),
            (1, Err(Failure::LeaseLost), Decision::Ack),
            (3, Err(Failure::LeaseLost), Decision::Ack),
            (1, fatal(), give_up_fatal.clone()),
            (3, fatal(), give_up_fatal),
            (1, retryable(), Decision::Retry),
            (2, retryable(), Decision::Retry),
            (3, retryable(), exhausted(3)),
            (4, retryable(), exhausted(4)),
        ];
        for (attempt, result, want) in table {
            let label = format!("attempt {attempt}, {result:?}");
            assert_eq!(decide("slice 2", attempt, result, POLICY), want, "{label}");
        }
    }

    #[test]
    fn a_claim_past_the_last_attempt_gives_up_before_running() {
        assert_eq!(before_run("merge", 1, POLICY), None);
        assert_eq!(before_run("merge", 3, POLICY), None);
        assert_eq!(
            before_run("merge", 4, POLICY),
            Some(Decision::GiveUp {
                code: ErrorCode::RetriesExhausted,
                message: "merge gave up after 3 attempts".into(),
                then: Outcome::DeadLetter,
            })
        );
    }
}
