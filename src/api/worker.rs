//! One engine worker thread per served model. Requests queue to it through a
//! bounded channel (a full queue is answered 529 by the handler); the worker
//! owns the model's prompt cache, runs one generation at a time and streams
//! what it produces back over a per-request channel. A request whose client
//! has gone is skipped or cancelled.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use serde::Serialize;

use showdown_engine::{CancelToken, Engine, GenerateParams, Generation, KvCache, TokenConstraint};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::prompt_cache::{PromptCache, PromptCacheConfig};

/// A generation request for the worker.
pub struct Job {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Generation settings (max_tokens already clamped to the context).
    pub params: GenerateParams,
    /// Restricts the output (tool calls under a grammar).
    pub constraint: Option<Box<dyn TokenConstraint + Send>>,
    /// Raised when the client goes away.
    pub cancel: CancelToken,
    /// Where the worker reports.
    pub events: mpsc::UnboundedSender<WorkerEvent>,
}

/// What the worker reports about a job, in order.
#[derive(Debug)]
pub enum WorkerEvent {
    /// The job left the queue: this many prompt tokens come from the cache.
    Started {
        /// Prompt tokens reused.
        cached_tokens: usize,
    },
    /// Generated text.
    Text(String),
    /// Generation ended.
    Finished(Generation),
    /// Generation failed.
    Failed(ApiError),
}

/// Counters of one model's worker, for `/showdown/stats` and the logs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    generations: AtomicU64,
    cancelled: AtomicU64,
    failed: AtomicU64,
    prompt_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    generated_tokens: AtomicU64,
    cache_slots: AtomicUsize,
    cache_bytes: AtomicUsize,
}

/// A snapshot of [`WorkerStats`].
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatsSnapshot {
    /// Generations finished (cancelled ones included).
    pub generations: u64,
    /// Generations stopped because the client went away.
    pub cancelled: u64,
    /// Generations that failed.
    pub failed: u64,
    /// Prompt tokens of all generations.
    pub prompt_tokens: u64,
    /// Of which reused from the prompt cache.
    pub cached_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Conversations held in the prompt cache.
    pub cache_slots: usize,
    /// Bytes of keys and values the prompt cache holds.
    pub cache_bytes: usize,
}

impl WorkerStats {
    /// The current values.
    pub fn snapshot(&self) -> WorkerStatsSnapshot {
        WorkerStatsSnapshot {
            generations: self.generations.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            cached_tokens: self.cached_tokens.load(Ordering::Relaxed),
            generated_tokens: self.generated_tokens.load(Ordering::Relaxed),
            cache_slots: self.cache_slots.load(Ordering::Relaxed),
            cache_bytes: self.cache_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The sending side of a model's queue.
#[derive(Clone)]
pub struct WorkerHandle {
    jobs: mpsc::Sender<Job>,
    stats: Arc<WorkerStats>,
}

impl WorkerHandle {
    /// Starts the worker thread of `engine` with a queue of `queue_depth`.
    pub fn spawn(
        name: &str,
        engine: Arc<Engine>,
        cache: PromptCacheConfig,
        queue_depth: usize,
    ) -> std::io::Result<Self> {
        let (jobs, receiver) = mpsc::channel(queue_depth.max(1));
        let stats = Arc::new(WorkerStats::default());
        let worker_stats = stats.clone();
        thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || run(engine, PromptCache::new(cache), receiver, &worker_stats))?;
        Ok(Self { jobs, stats })
    }

    /// The worker's counters.
    pub fn stats(&self) -> WorkerStatsSnapshot {
        self.stats.snapshot()
    }

    /// Queues `job`, or gives it back when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), ApiError> {
        self.jobs.try_send(job).map_err(|err| match err {
            mpsc::error::TrySendError::Full(_) => {
                ApiError::overloaded("the engine's queue is full; retry later")
            }
            mpsc::error::TrySendError::Closed(_) => ApiError::internal("the engine has stopped"),
        })
    }
}

fn run(
    engine: Arc<Engine>,
    mut cache: PromptCache,
    mut jobs: mpsc::Receiver<Job>,
    stats: &WorkerStats,
) {
    while let Some(job) = jobs.blocking_recv() {
        if job.cancel.is_cancelled() || job.events.is_closed() {
            continue;
        }
        // A panic in one generation must not take the model down with it.
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_job(&engine, &mut cache, job, stats)
        }));
        if outcome.is_err() {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!("a generation panicked; its cache was dropped");
        }
        stats
            .cache_slots
            .store(cache.slot_count(), Ordering::Relaxed);
        stats
            .cache_bytes
            .store(cache.allocated_bytes(), Ordering::Relaxed);
    }
}

fn run_job(engine: &Engine, prompt_cache: &mut PromptCache, mut job: Job, stats: &WorkerStats) {
    let mut kv: KvCache = match prompt_cache.checkout(engine, &job.prompt) {
        Ok(kv) => kv,
        Err(err) => {
            let _ = job.events.send(WorkerEvent::Failed(err.into()));
            return;
        }
    };
    let cached_tokens = kv.common_prefix_len(&job.prompt[..job.prompt.len().saturating_sub(1)]);
    let _ = job.events.send(WorkerEvent::Started { cached_tokens });
    let events = job.events.clone();
    let cancel = job.cancel.clone();
    let constraint = job
        .constraint
        .as_deref_mut()
        .map(|c| c as &mut dyn TokenConstraint);
    let result = engine.generate_constrained(
        &mut kv,
        &job.prompt,
        &job.params,
        constraint,
        &job.cancel,
        |text| {
            if events.send(WorkerEvent::Text(text.to_string())).is_err() {
                cancel.cancel();
            }
        },
    );
    match result {
        Ok(generation) => {
            let t = &generation.timings;
            stats.generations.fetch_add(1, Ordering::Relaxed);
            if generation.stop_reason == showdown_engine::StopReason::Cancelled {
                stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            stats
                .prompt_tokens
                .fetch_add(t.prompt_tokens as u64, Ordering::Relaxed);
            stats
                .cached_tokens
                .fetch_add(t.cached_tokens as u64, Ordering::Relaxed);
            stats
                .generated_tokens
                .fetch_add(t.generated_tokens as u64, Ordering::Relaxed);
            prompt_cache.put_back(kv);
            let _ = job.events.send(WorkerEvent::Finished(generation));
        }
        Err(err) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            // The cache may hold a half-written chunk: drop it.
            let _ = job.events.send(WorkerEvent::Failed(err.into()));
        }
    }
}
