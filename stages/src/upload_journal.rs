//! The job store as the destinations' [`UploadJournal`]: a job's open S3 multipart
//! uploads are noted where a restarted worker, or the manifest stage at the end of the
//! job, finds them and aborts what a killed worker left.

use async_trait::async_trait;
use pipeline::JobId;
use pipeline::store::JobStore;

use crate::destination::UploadJournal;

pub struct StoreJournal {
    store: JobStore,
    job: JobId,
}

impl StoreJournal {
    pub fn new(store: JobStore, job: JobId) -> Self {
        Self { store, job }
    }
}

#[async_trait]
impl UploadJournal for StoreJournal {
    async fn opened(&self, key: &str, upload_id: &str) {
        if let Err(e) = self
            .store
            .record_open_upload(&self.job, key, upload_id)
            .await
        {
            tracing::warn!(job = %self.job, key, error = %e, "could not note an open upload");
        }
    }

    async fn closed(&self, upload_id: &str) {
        if let Err(e) = self.store.forget_open_upload(&self.job, upload_id).await {
            tracing::warn!(job = %self.job, error = %e, "could not forget a settled upload");
        }
    }

    async fn left_open(&self, key: Option<&str>) -> Vec<(String, String)> {
        match self.store.open_uploads(&self.job, key).await {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(job = %self.job, error = %e, "could not read the open uploads");
                Vec::new()
            }
        }
    }
}
