//! Concurrency slots and the bounded queue in front of them: a full queue answers 429 at once
//! rather than letting clients hang. A slot is held for a job's whole life (streams included).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

pub struct Slots {
    semaphore: Arc<Semaphore>,
    queue: usize,
}

/// Holding one lets a job decode.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(concurrency: usize, queue: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(concurrency.max(1))),
            queue,
        }
    }

    /// A slot now, or after waiting in the queue; 429 when the queue is full.
    /// `depth` is the queue-depth gauge, kept current.
    pub async fn acquire(&self, depth: &AtomicUsize) -> Result<Slot, ApiError> {
        if let Ok(p) = self.semaphore.clone().try_acquire_owned() {
            return Ok(Slot { _permit: p });
        }
        if depth.fetch_add(1, Ordering::SeqCst) >= self.queue {
            depth.fetch_sub(1, Ordering::SeqCst);
            return Err(ApiError::overloaded(1));
        }
        // Leaves the queue however the wait ends (a slot, or the client gone).
        struct InQueue<'a>(&'a AtomicUsize);
        impl Drop for InQueue<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _in_queue = InQueue(depth);
        let p = self
            .semaphore
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("server shutting down"))?;
        Ok(Slot { _permit: p })
    }
}
