//! Prompt caching across requests: several KV caches ("slots") per model.
//! A request takes the slot holding the longest prefix of its prompt. When
//! that would cut a slot short (a side request sharing only part of the main
//! conversation), the shared prefix is forked into another slot instead, so a
//! title or sub-agent request does not evict the conversation. Slots are
//! evicted least recently used, by count and by a memory budget.

use showdown_engine::{Engine, KvCache};

/// Tokens at the end of a slot a continuing prompt may differ in (the last
/// answer re-rendered by the template) and still take the slot over.
const TAIL_SLACK: usize = 16;

/// Shared prefixes shorter than this are prefilled again rather than copied.
const MIN_FORK: usize = 64;

/// Settings of the prompt cache.
#[derive(Debug, Clone, Copy)]
pub struct PromptCacheConfig {
    /// Reuse cached prefixes at all (`--no-prefix-cache` turns this off).
    pub enabled: bool,
    /// Most caches kept per model.
    pub slots: usize,
    /// Most bytes of keys and values kept per model.
    pub budget_bytes: usize,
}

struct Slot {
    cache: KvCache,
    last_used: u64,
}

/// The slots of one model; owned by its engine worker thread.
pub struct PromptCache {
    config: PromptCacheConfig,
    slots: Vec<Slot>,
    clock: u64,
}

impl PromptCache {
    /// An empty prompt cache.
    pub fn new(config: PromptCacheConfig) -> Self {
        Self {
            config,
            slots: Vec::new(),
            clock: 0,
        }
    }

    /// Takes the cache to run `prompt` on, already holding the longest cached
    /// prefix of it. Give it back with [`PromptCache::put_back`].
    pub fn checkout(
        &mut self,
        engine: &Engine,
        prompt: &[u32],
    ) -> showdown_engine::Result<KvCache> {
        if !self.config.enabled {
            self.slots.clear();
            return Ok(engine.new_cache());
        }
        let best = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (i, slot.cache.common_prefix_len(prompt)))
            .max_by_key(|&(i, common)| (common, self.slots[i].last_used));
        let Some((index, common)) = best else {
            return Ok(engine.new_cache());
        };
        let slot_len = self.slots[index].cache.len();
        if common + TAIL_SLACK >= slot_len || common + 1 >= prompt.len() {
            // The prompt continues this slot (give or take a re-tokenized
            // tail of the last answer), or repeats its prompt.
            return Ok(self.slots.remove(index).cache);
        }
        if common < MIN_FORK {
            // Too little shared to be worth a copy: start afresh.
            return Ok(engine.new_cache());
        }
        // Keep the longer conversation; continue from a copy of the shared part.
        let forked = self.slots[index].cache.fork_prefix(common)?;
        self.slots[index].last_used = self.tick();
        Ok(forked)
    }

    /// Keeps `cache` for later requests, evicting the least recently used
    /// slots beyond the slot count and the memory budget.
    pub fn put_back(&mut self, cache: KvCache) {
        if !self.config.enabled || cache.is_empty() {
            return;
        }
        let last_used = self.tick();
        self.slots.push(Slot { cache, last_used });
        while self.slots.len() > self.config.slots.max(1)
            || (self.slots.len() > 1 && self.allocated_bytes() > self.config.budget_bytes)
        {
            let oldest = self
                .slots
                .iter()
                .enumerate()
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(i, _)| i)
                .expect("at least two slots");
            self.slots.remove(oldest);
        }
        if self.allocated_bytes() > self.config.budget_bytes {
            // One conversation larger than the budget is not kept at all.
            self.slots.clear();
        }
    }

    /// Slots held.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Bytes of keys and values held.
    pub fn allocated_bytes(&self) -> usize {
        self.slots.iter().map(|s| s.cache.allocated_bytes()).sum()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}
