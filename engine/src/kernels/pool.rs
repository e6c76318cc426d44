//! One thread pool for the engine's kernels. A decode step runs a few hundred
//! small matmuls, each of a few microseconds, so a job must start in well
//! under a microsecond: workers spin on a job counter for a while after each
//! job, then sleep on a condition variable, so an idle engine costs no CPU.
//!
//! A job is a closure every participant (the caller and each worker) calls
//! once with its index; kernels split their work inside it, usually through
//! an atomic task counter ([`Pool::for_each`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps
/// between the matmuls of one decode step, short enough not to burn a core
/// between requests.
const SPIN: Duration = Duration::from_micros(200);

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; workers run a job when it changes.
    epoch: AtomicUsize,
    /// The current job, as a pointer whose lifetime `run` guarantees.
    job: Mutex<Option<JobPtr>>,
    /// Workers that have not finished the current job.
    remaining: AtomicUsize,
    /// Workers asleep on `wake`.
    sleepers: AtomicUsize,
    sleep: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync`, and `run` keeps it alive until every worker
// has finished with it.
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
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            remaining: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            sleep: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..threads)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("showdown-kernel-{index}"))
                    .spawn(move || worker(&shared, index))
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

    /// Runs `f(index)` once on each participant, `index` in `0..threads()`,
    /// and returns when all have finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.workers.is_empty() {
            f(0);
            return;
        }
        // A job submitted from inside a job (or from a second thread while
        // one runs) runs on the caller alone rather than deadlocking.
        let Ok(_guard) = self.submit.try_lock() else {
            f(0);
            return;
        };
        let shared = &*self.shared;
        // SAFETY: the pointer is only dereferenced by workers between the
        // epoch bump below and their decrement of `remaining`; this function
        // waits for `remaining` to reach zero before returning, so `f`
        // outlives every use. The transmute only erases that lifetime.
        let ptr: *const Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &Job>(f) };
        *shared.job.lock().expect("job lock") = Some(JobPtr(ptr));
        shared.remaining.store(self.workers.len(), Ordering::SeqCst);
        shared.epoch.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _lock = shared.sleep.lock().expect("sleep lock");
            shared.wake.notify_all();
        }
        f(0);
        let mut spins = 0u32;
        while shared.remaining.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Calls `task(i)` for every `i` in `0..tasks`, spread over the pool by
    /// an atomic counter (each task runs exactly once, on some thread).
    pub fn for_each(&self, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if tasks == 0 {
            return;
        }
        if tasks == 1 || self.workers.is_empty() {
            (0..tasks).for_each(task);
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|_| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= tasks {
                break;
            }
            task(i);
        });
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _lock = self.shared.sleep.lock().expect("sleep lock");
            self.shared.wake.notify_all();
        }
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

fn worker(shared: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        let started = Instant::now();
        let mut spins = 0u32;
        while shared.epoch.load(Ordering::SeqCst) == seen {
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
            while shared.epoch.load(Ordering::SeqCst) == seen {
                lock = shared.wake.wait(lock).expect("sleep lock");
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(lock);
        }
        seen = shared.epoch.load(Ordering::SeqCst);
        if shared.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = *shared.job.lock().expect("job lock");
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: see `Pool::run`.
            unsafe { (*ptr)(index) };
        }
        shared.remaining.fetch_sub(1, Ordering::Release);
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
    fn nested_jobs_run_on_the_caller() {
        let pool = Pool::new(2);
        let count = AtomicUsize::new(0);
        pool.run(&|_| {
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
