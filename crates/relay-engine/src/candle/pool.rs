//! The thread pool our own kernels (native and Q8 matmuls, attention) split their work over.
//!
//! A decode step is a few hundred short parallel regions (tens to hundreds of microseconds
//! each), so hand-off latency matters and workers spin briefly between regions. candle's
//! barrier pool spins without bound while the caller waits for a straggler, which on a
//! loaded machine burns the very core the descheduled straggler needs; here every wait spins
//! for a few microseconds, then yields, and idle workers park after a while.

use std::cell::{Cell, UnsafeCell};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// Spins before a wait starts yielding its core.
const SPINS: u32 = 2_000;
/// How long an idle worker keeps polling (spinning, then yielding) before it parks.
const IDLE_BEFORE_PARK: Duration = Duration::from_micros(200);

struct Job {
    call: unsafe fn(*const (), Range<usize>),
    data: *const (),
    items: usize,
    chunk: usize,
}

struct Shared {
    /// Bumped once per job; workers run a job when they see a new value.
    generation: AtomicUsize,
    job: UnsafeCell<Job>,
    /// Next unclaimed item of the current job.
    cursor: AtomicUsize,
    /// Workers that have not finished the current job.
    running: AtomicUsize,
    panicked: AtomicBool,
    sleeping: Vec<AtomicBool>,
}

// SAFETY: `job` is written only by the caller holding `Pool::call` while no worker reads it
// (between jobs: every worker has finished the previous one); workers read it after seeing the
// new generation, which is published with Release after the write.
unsafe impl Sync for Shared {}

pub(crate) struct Pool {
    shared: &'static Shared,
    threads: Vec<Thread>,
    call: Mutex<()>,
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// The process-wide pool: as many threads as candle's (`CANDLE_NUM_THREADS`, which the engine
/// sets from `LoadOptions::threads`), the calling thread being one of them.
pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads().saturating_sub(1)))
}

/// Runs `f` over `0..items` on the pool that suits a forward of `rows` token rows: ours for
/// decode-sized calls, candle's for prefill-sized ones (whose weight matmuls run on candle's
/// pool, see `Weight::forward`), so that one pool's idle spinning never competes with the
/// other's work.
pub(crate) fn run<F: Fn(Range<usize>) + Sync>(rows: usize, items: usize, f: F) {
    if rows >= super::model::BATCHED_ROWS {
        candle_core::utils::barrier_pool().execute_chunked(items, f);
    } else {
        pool().run(items, f);
    }
}

/// Spins, then yields, until `done()`; used for every wait so a loaded machine's scheduler
/// can run whoever we wait for.
fn wait_until(mut done: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while !done() {
        if spins < SPINS {
            spins += 1;
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

impl Pool {
    fn new(workers: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicUsize::new(0),
            job: UnsafeCell::new(Job {
                call: |_, _| {},
                data: std::ptr::null(),
                items: 0,
                chunk: 1,
            }),
            cursor: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        }));
        let threads = (0..workers)
            .map(|id| {
                std::thread::Builder::new()
                    .name(format!("relay-compute-{id}"))
                    .spawn(move || worker(shared, id))
                    .expect("spawn compute thread")
                    .thread()
                    .clone()
            })
            .collect();
        Self {
            shared,
            threads,
            call: Mutex::new(()),
        }
    }

    /// Runs `f` over `0..items` in chunks spread over the pool, returning when all are done.
    /// Chunks are claimed from a shared cursor, so a thread that was descheduled costs only
    /// the chunk it holds.
    pub fn run<F: Fn(Range<usize>) + Sync>(&self, items: usize, f: F) {
        if items == 0 {
            return;
        }
        if self.threads.is_empty() || IN_POOL.with(|p| p.get()) {
            f(0..items);
            return;
        }
        unsafe fn call<F: Fn(Range<usize>)>(data: *const (), r: Range<usize>) {
            // SAFETY: `data` is the `&F` published by `run`, alive until `run` returns.
            unsafe { (*(data as *const F))(r) }
        }
        let _guard = self.call.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.shared;
        let n_threads = self.threads.len() + 1;
        // SAFETY: see `Shared`; no worker is inside a job while we hold `call`.
        unsafe {
            *s.job.get() = Job {
                call: call::<F>,
                data: &f as *const F as *const (),
                items,
                chunk: items.div_ceil(n_threads * 4).max(1),
            };
        }
        s.cursor.store(0, Ordering::Relaxed);
        s.running.store(self.threads.len(), Ordering::Relaxed);
        s.generation.fetch_add(1, Ordering::SeqCst);
        for (t, sleeping) in self.threads.iter().zip(&s.sleeping) {
            if sleeping.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        IN_POOL.with(|p| p.set(true));
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(s)));
        IN_POOL.with(|p| p.set(false));
        wait_until(|| s.running.load(Ordering::Acquire) == 0);
        if let Err(e) = ok {
            std::panic::resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a compute thread panicked");
        }
    }
}

/// Claims and runs chunks of the current job until none are left.
fn work(s: &Shared) {
    // SAFETY: read only while the job is live (see `Shared`).
    let job = unsafe { &*s.job.get() };
    loop {
        let start = s.cursor.fetch_add(job.chunk, Ordering::Relaxed);
        if start >= job.items {
            break;
        }
        // SAFETY: `call` and `data` were published together by `run`.
        unsafe { (job.call)(job.data, start..(start + job.chunk).min(job.items)) };
    }
}

fn worker(s: &'static Shared, id: usize) {
    IN_POOL.with(|p| p.set(true));
    let mut seen = 0usize;
    loop {
        let idle_since = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else if idle_since.elapsed() < IDLE_BEFORE_PARK {
                std::thread::yield_now();
            } else {
                s.sleeping[id].store(true, Ordering::SeqCst);
                if s.generation.load(Ordering::SeqCst) == seen {
                    std::thread::park();
                }
                s.sleeping[id].store(false, Ordering::SeqCst);
            }
        }
        seen = s.generation.load(Ordering::Acquire);
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(s))).is_err() {
            s.panicked.store(true, Ordering::Relaxed);
        }
        s.running.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item runs exactly once, for many back-to-back jobs and with two callers at once
    /// (the engine's `score` runs a forward without the sequence lock).
    #[test]
    fn every_item_runs_once() {
        let pool = Pool::new(3);
        std::thread::scope(|s| {
            for caller in 0..2 {
                let pool = &pool;
                s.spawn(move || {
                    for job in 0..300 {
                        let items = 1 + (job * 7 + caller) % 97;
                        let hits: Vec<AtomicUsize> =
                            (0..items).map(|_| AtomicUsize::new(0)).collect();
                        pool.run(items, |r| {
                            for i in r {
                                hits[i].fetch_add(1, Ordering::Relaxed);
                            }
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                    }
                });
            }
        });
    }
}
