//! One thread pool for the engine's kernels. A decode step runs a few hundred
//! small matmuls, each of a few microseconds, so a job must start in well
//! under a microsecond: workers spin on a job counter for a while after each
//! job, then sleep on a condition variable, so an idle engine costs no CPU.
//!
//! A job is a set of tasks pulled from an atomic counter ([`Pool::for_each`]).
//! Workers join a job while it is open; the caller runs tasks too, and once
//! none is left it closes the job and waits only for the workers inside it.
//! A worker the OS has not scheduled yet (a busy machine: a compiler, the
//! agent beside the server) is never waited for; the caller has done its
//! share. Which thread runs a task never changes what the task computes.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps
/// between the matmuls of one decode step, short enough not to burn a core
/// between requests.
const SPIN: Duration = Duration::from_micros(200);

type Job = dyn Fn() + Sync;

/// `state`: the job's generation in the high bits, [`OPEN`] while workers
/// may join, and the count of workers inside the job in the low bits.
const OPEN: u64 = 1 << 16;
const ACTIVE: u64 = OPEN - 1;
const EPOCH: u64 = 1 << 17;

struct Shared {
    state: AtomicU64,
    /// The current job, as a pointer whose lifetime `for_each` guarantees.
    job: Mutex<Option<JobPtr>>,
    /// Workers asleep on `wake`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync`, and `for_each` keeps it alive until every
// worker that joined has left.
unsafe impl Send for JobPtr {}

/// A fixed set of worker threads plus the calling thread.
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// Serialises jobs from different calling threads.
    submit: Mutex<()>,
}

impl Pool {
    /// A pool of `threads` participants (the caller counts as one).
    pub fn new(threads: usize) -> Self {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            state: AtomicU64::new(0),
            job: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|_| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("showdown-kernel".into())
                    .spawn(move || worker(&shared))
                    .expect("spawn kernel worker")
            })
            .collect();
        Self {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// Participants in each job.
    pub fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `task(i)` for every `i` in `0..tasks`, spread over the pool by
    /// an atomic counter (each task runs exactly once, on some thread), and
    /// returns when all have finished.
    pub fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        let next = AtomicUsize::new(0);
        let drain = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            task(i);
        };
        if tasks == 1 || self.workers.is_empty() {
            drain();
            return;
        }
        // A job submitted from inside a job (or from a second thread while
        // one runs) runs on the caller alone rather than deadlocking.
        let Ok(_guard) = self.submit.try_lock() else {
            drain();
            return;
        };
        let shared = &*self.shared;
        let job: &(dyn Fn() + Sync) = &drain;
        // SAFETY: workers dereference the pointer only while counted in
        // `state`'s active bits, and this function returns only after the job
        // is closed and that count is zero, so `drain` outlives every use.
        // The transmute only erases the lifetime.
        let ptr: *const Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &Job>(job) };
        *shared.job.lock().expect("job lock") = Some(JobPtr(ptr));
        let epoch = (shared.state.load(Ordering::Acquire) & !(OPEN | ACTIVE)) + EPOCH;
        shared.state.store(epoch | OPEN, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = shared.sleep.lock().expect("sleep lock");
            shared.wake.notify_all();
        }
        drain();
        // No task is left to start: close the job, then wait for the workers
        // still finishing theirs.
        shared.state.fetch_and(!OPEN, Ordering::SeqCst);
        let mut spins = 0u32;
        while shared.state.load(Ordering::Acquire) & ACTIVE != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *shared.job.lock().expect("job lock") = None;
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.state.fetch_add(EPOCH, Ordering::SeqCst);
        {
            let _lock = self.shared.sleep.lock().expect("sleep lock");
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn worker(shared: &Shared) {
    let generation = |state: u64| state & !(OPEN | ACTIVE);
    let mut seen = 0u64;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while generation(shared.state.load(Ordering::SeqCst)) == seen {
            spins += 1;
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            if started.elapsed() < SPIN {
                // Let another runnable thread (a second pool, the OS) in.
                std::thread::yield_now();
                continue;
            }
            let mut lock = shared.sleep.lock().expect("sleep lock");
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            while generation(shared.state.load(Ordering::SeqCst)) == seen {
                lock = shared.wake.wait(lock).expect("sleep lock");
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(lock);
        }
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        // Join the job only while it is open: one that closed while this
        // thread was not running is finished without it.
        let mut state = shared.state.load(Ordering::SeqCst);
        seen = generation(state);
        let joined = loop {
            if state & OPEN == 0 || generation(state) != seen {
                break false;
            }
            match shared.state.compare_exchange_weak(
                state,
                state + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break true,
                Err(now) => state = now,
            }
        };
        if !joined {
            continue;
        }
        let job = *shared.job.lock().expect("job lock");
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: see `Pool::for_each`.
            unsafe { (*ptr)() };
        }
        shared.state.fetch_sub(1, Ordering::Release);
    }
}

static THREADS: OnceLock<usize> = OnceLock::new();
static POOL: OnceLock<Pool> = OnceLock::new();

/// Sets the number of threads the engine's kernels use. Only the first call
/// before the pool starts counts; later calls return `false`.
pub fn set_threads(threads: usize) -> bool {
    THREADS.set(threads.max(1)).is_ok() && POOL.get().is_none()
}

/// The engine's pool, started on first use with the threads set by
/// [`set_threads`], else one per available core.
pub fn pool() -> &'static Pool {
    POOL.get_or_init(|| {
        let threads = *THREADS.get_or_init(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        Pool::new(threads)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_any_thread_count() {
        for threads in [1, 2, 3] {
            let pool = Pool::new(threads);
            for tasks in [0, 1, 7, 1000] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.for_each(tasks, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn late_workers_neither_miss_nor_repeat_tasks() {
        // Many short jobs back to back: workers often arrive after the caller
        // has closed a job, or join the next one while others leave.
        let pool = Pool::new(3);
        for tasks in (1..2000).map(|j| 1 + j % 5) {
            let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each(tasks, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn nested_jobs_run_on_the_caller() {
        let pool = Pool::new(2);
        let count = AtomicUsize::new(0);
        pool.for_each(2, &|_| {
            pool.for_each(3, &|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        assert_eq!(count.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn wakes_after_sleeping() {
        let pool = Pool::new(2);
        pool.for_each(4, &|_| {});
        std::thread::sleep(SPIN * 5);
        let count = AtomicUsize::new(0);
        pool.for_each(4, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }
}
