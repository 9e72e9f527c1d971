//! Starting a job: its row in the job store, then the task that lists its first page.
//! The CLI, the console and the scheduler all start jobs this way; what each does
//! around it (launching a worker, counting, auditing) stays with the caller.

use async_nats::jetstream;

use crate::store::{JobStore, StoreError};
use crate::topology::{self, TopologyError};
use crate::{JobId, JobSpec};

/// Why a job could not be started. Each variant says what its source says: the caller
/// shows the same message as when it called the store or NATS itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] TopologyError),
}

/// Records job `job` for `organisation` (started by `started_by`) and queues its first
/// list task. The row comes first, so a stage that picks the task up finds the job.
pub async fn start_job(
    store: &JobStore,
    js: &jetstream::Context,
    job: &JobId,
    organisation: &str,
    started_by: &str,
    spec: &JobSpec,
) -> Result<(), StartError> {
    store
        .create_job(job, organisation, started_by, spec)
        .await?;
    topology::publish_first_list_task(js, job).await?;
    Ok(())
}
