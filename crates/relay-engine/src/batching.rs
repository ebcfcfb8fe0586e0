//! Continuous batching for an in-process engine: decode steps that request threads submit at
//! about the same time run as one batched [`Engine::step`], so N running requests read the
//! weights once per token instead of N times.
//!
//! No scheduler thread: the first thread to submit a step while none is running becomes the
//! leader. It waits until as many steps are queued as ran in the previous batch (those
//! requests are most likely coming back) or the join window passes, takes the whole queue,
//! runs it as one batch, and hands each follower its logits. A request that arrives while a
//! batch runs joins the next one. "Expected" is the sequences that stepped (or were
//! prefilled) within the last [`ACTIVE_FOR`] and are not freed: one that stops stepping (its LLM is writing, it ended)
//! drops out of it. Prefill, truncate, fork and free go straight to the inner engine.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::engine::{Engine, ModelInfo, SeqId};
use crate::error::{EngineError, Result};

/// How long a leader waits for the steps it expects before running with what it has.
pub const DEFAULT_JOIN_WINDOW: Duration = Duration::from_millis(3);

/// A sequence that stepped this recently is expected to step again soon.
pub const ACTIVE_FOR: Duration = Duration::from_millis(200);

pub struct BatchingEngine {
    inner: Arc<dyn Engine>,
    window: Duration,
    queue: Mutex<Queue>,
    /// Signalled when a step is queued or a batch's results are out.
    changed: Condvar,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiting>,
    /// A leader is collecting or running a batch.
    leading: bool,
    /// When each live sequence last stepped or was prefilled.
    last_step: std::collections::HashMap<SeqId, Instant>,
    /// Finished results by ticket, taken by their followers.
    done: Vec<(u64, Result<Vec<f32>>)>,
    next_ticket: u64,
    stats: BatchStats,
}

struct Waiting {
    ticket: u64,
    seq: SeqId,
    token: u32,
}

/// What the batcher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batched forwards run.
    pub batches: u64,
    /// Steps they held (`steps / batches` is the mean batch size).
    pub steps: u64,
    /// The largest batch.
    pub max_batch: usize,
}

impl BatchingEngine {
    pub fn new(inner: Arc<dyn Engine>, window: Duration) -> Self {
        Self {
            inner,
            window,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        }
    }

    pub fn stats(&self) -> BatchStats {
        self.queue.lock().unwrap().stats
    }

    /// One sequence's step through the shared batch.
    fn step_one(&self, seq: SeqId, token: u32) -> Result<Vec<f32>> {
        let mut q = self.queue.lock().unwrap();
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.waiting.push(Waiting { ticket, seq, token });
        self.changed.notify_all();
        loop {
            if let Some(i) = q.done.iter().position(|(t, _)| *t == ticket) {
                return q.done.swap_remove(i).1;
            }
            if !q.leading && q.waiting.iter().any(|w| w.ticket == ticket) {
                q.leading = true;
                q = self.lead(q);
                continue;
            }
            q = self.changed.wait(q).unwrap();
        }
    }

    /// Collects the batch, runs it without holding the queue, posts the results.
    fn lead<'a>(
        &'a self,
        mut q: std::sync::MutexGuard<'a, Queue>,
    ) -> std::sync::MutexGuard<'a, Queue> {
        let now = Instant::now();
        q.last_step
            .retain(|_, at| now.duration_since(*at) < ACTIVE_FOR);
        let expected = q.last_step.len();
        let deadline = now + self.window;
        while q.waiting.len() < expected.max(1) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            q = self.changed.wait_timeout(q, deadline - now).unwrap().0;
        }
        let batch = std::mem::take(&mut q.waiting);
        let now = Instant::now();
        for w in &batch {
            q.last_step.insert(w.seq, now);
        }
        q.stats.batches += 1;
        q.stats.steps += batch.len() as u64;
        q.stats.max_batch = q.stats.max_batch.max(batch.len());
        drop(q);

        let results = self.run(&batch);

        let mut q = self.queue.lock().unwrap();
        q.done.extend(batch.iter().map(|w| w.ticket).zip(results));
        q.leading = false;
        self.changed.notify_all();
        q
    }

    /// The batch as one step; should it fail (one bad sequence spoils a batch), each step
    /// alone, so every request gets its own result or error.
    fn run(&self, batch: &[Waiting]) -> Vec<Result<Vec<f32>>> {
        let items: Vec<(SeqId, u32)> = batch.iter().map(|w| (w.seq, w.token)).collect();
        match self.inner.step(&items) {
            Ok(logits) if logits.len() == items.len() => logits.into_iter().map(Ok).collect(),
            Ok(_) => items
                .iter()
                .map(|_| {
                    Err(EngineError::Internal(
                        "engine contract broken: step returned the wrong count".into(),
                    ))
                })
                .collect(),
            Err(_) if items.len() > 1 => items
                .iter()
                .map(|&item| {
                    self.inner.step(&[item]).and_then(|mut v| {
                        v.pop().ok_or_else(|| {
                            EngineError::Internal("engine contract broken: empty step".into())
                        })
                    })
                })
                .collect(),
            Err(e) => vec![Err(e)],
        }
    }
}

impl Engine for BatchingEngine {
    fn info(&self) -> &ModelInfo {
        self.inner.info()
    }
    fn create_sequence(&self) -> Result<SeqId> {
        self.inner.create_sequence()
    }
    /// A prefilled sequence is about to step: the next leader waits for it.
    fn prefill(&self, seq: SeqId, tokens: &[u32]) -> Result<Vec<f32>> {
        let logits = self.inner.prefill(seq, tokens)?;
        self.queue
            .lock()
            .unwrap()
            .last_step
            .insert(seq, Instant::now());
        Ok(logits)
    }
    /// A single-sequence step joins the shared batch; a caller's own multi-sequence batch runs
    /// as it is.
    fn step(&self, batch: &[(SeqId, u32)]) -> Result<Vec<Vec<f32>>> {
        match batch {
            [(seq, token)] => Ok(vec![self.step_one(*seq, *token)?]),
            _ => self.inner.step(batch),
        }
    }
    fn seq_len(&self, seq: SeqId) -> Result<usize> {
        self.inner.seq_len(seq)
    }
    fn truncate(&self, seq: SeqId, len: usize) -> Result<()> {
        self.inner.truncate(seq, len)
    }
    fn fork(&self, seq: SeqId) -> Result<SeqId> {
        self.inner.fork(seq)
    }
    fn free(&self, seq: SeqId) -> Result<()> {
        self.queue.lock().unwrap().last_step.remove(&seq);
        self.inner.free(seq)
    }
    fn score(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.inner.score(tokens)
    }
    fn continues_in_one_go(&self) -> bool {
        self.inner.continues_in_one_go()
    }
    fn generate_greedy(
        &self,
        seq: SeqId,
        tokens: &[u32],
        max_new: usize,
    ) -> Option<Result<Vec<u32>>> {
        self.inner.generate_greedy(seq, tokens, max_new)
    }
}
