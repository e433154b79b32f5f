//! An object written for a request that may still be refused. It is deleted unless the request
//! keeps it: [`Staged::discard`] deletes it before the answer goes out, and an object neither
//! kept nor discarded (an early `?`, a panic, a dropped request) is deleted in the background.

use vtx_infra::ObjectStore;

pub(crate) struct Staged {
    store: ObjectStore,
    key: String,
    settled: bool,
}

impl Staged {
    pub(crate) fn new(store: &ObjectStore, key: String) -> Self {
        Self {
            store: store.clone(),
            key,
            settled: false,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The request succeeded and something refers to the object now: it stays.
    pub(crate) fn keep(mut self) {
        self.settled = true;
    }

    /// The request failed, or the object turned out not to be needed: deleted now.
    pub(crate) async fn discard(mut self) {
        self.settled = true;
        delete(&self.store, &self.key).await;
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (store, key) = (self.store.clone(), std::mem::take(&mut self.key));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { delete(&store, &key).await });
        } else {
            tracing::warn!(key, "an abandoned object could not be deleted (no runtime)");
        }
    }
}

async fn delete(store: &ObjectStore, key: &str) {
    if let Err(e) = store.delete(key).await {
        tracing::warn!(key, error = %e, "could not delete an object a refused request wrote");
    }
}
