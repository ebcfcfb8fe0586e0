//! Concurrency slots and the bounded queue in front of them: a full queue answers 429 at once
//! rather than letting clients hang. A slot is held for a job's whole life (streams included),
//! or until a shutdown's grace runs out ([`GraceOver`]).
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

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

/// Declared once, when a shutdown's grace for requests in flight runs out (or a second signal
/// asks to stop now): every job still running or queued then ends at once with a final
/// message (503, and `[DONE]` on a stream) instead of having its connection cut at exit.
#[derive(Clone)]
pub struct GraceOver(Arc<watch::Sender<bool>>);

impl Default for GraceOver {
    fn default() -> Self {
        Self(Arc::new(watch::channel(false).0))
    }
}

impl GraceOver {
    pub fn declare(&self) {
        self.0.send_replace(true);
    }
    pub fn is_over(&self) -> bool {
        *self.0.borrow()
    }
    /// Resolves once declared.
    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|&over| over).await;
    }
}
