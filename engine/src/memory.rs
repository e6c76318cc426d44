//! Resident memory of this process, as the OS reports it: what a model really
//! costs once loaded (MoE models must keep every expert resident).

use serde::Serialize;

/// Resident set size now and at its peak, in bytes.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ResidentMemory {
    /// Current resident set (`VmRSS`).
    pub current_bytes: u64,
    /// Peak resident set since the process started (`VmHWM`).
    pub peak_bytes: u64,
}

impl ResidentMemory {
    /// Reads `/proc/self/status`; `None` where the OS has no such file.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        };
        Some(Self {
            current_bytes: field("VmRSS:")?,
            peak_bytes: field("VmHWM:")?,
        })
    }

    /// Starts the peak over from the current resident set (Linux's
    /// `clear_refs` value 5), so one process can report several models' peaks.
    /// Does nothing where the OS does not offer it.
    pub fn reset_peak() {
        let _ = std::fs::write("/proc/self/clear_refs", "5");
    }
}

/// Hands memory the allocator has freed back to the OS. glibc keeps the
/// small blocks a load frees (a tokenizer's transient merge list, a parsed
/// header's strings) in its heap, where they would count as resident for
/// the life of the process.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions; it only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_nonzero_memory_on_linux() {
        if cfg!(target_os = "linux") {
            let m = super::ResidentMemory::read().unwrap();
            assert!(m.current_bytes > 0 && m.peak_bytes >= m.current_bytes);
        }
    }

    #[test]
    fn reset_peak_drops_an_earlier_peak() {
        if cfg!(target_os = "linux") {
            let big = vec![1u8; 64 << 20];
            let with_big = super::ResidentMemory::read().unwrap().peak_bytes;
            drop(std::hint::black_box(big));
            super::ResidentMemory::reset_peak();
            let after = super::ResidentMemory::read().unwrap();
            assert!(
                after.peak_bytes < with_big,
                "{} < {with_big}",
                after.peak_bytes
            );
        }
    }
}
