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
    /// Reads `/proc/self/status` on Linux; elsewhere the peak from
    /// `getrusage` (the current set is then not known and given as the
    /// peak). `None` where neither answers.
    pub fn read() -> Option<Self> {
        Self::from_proc().or_else(Self::from_rusage)
    }

    fn from_proc() -> Option<Self> {
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

    /// The peak resident set from `getrusage`: `ru_maxrss` is in bytes on
    /// macOS and in KiB on Linux and the BSDs.
    #[cfg(unix)]
    fn from_rusage() -> Option<Self> {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a whole rusage into the pointer it is
        // given, which points at one; RUSAGE_SELF is always valid.
        let usage = unsafe {
            if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
                return None;
            }
            usage.assume_init()
        };
        let max = u64::try_from(usage.ru_maxrss).ok().filter(|m| *m > 0)?;
        let unit = if cfg!(target_vendor = "apple") {
            1
        } else {
            1024
        };
        let peak = max.checked_mul(unit)?;
        Some(Self {
            current_bytes: peak,
            peak_bytes: peak,
        })
    }

    #[cfg(not(unix))]
    fn from_rusage() -> Option<Self> {
        None
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

    /// The getrusage path (macOS's) agrees with /proc on Linux: KiB were
    /// turned into bytes, not left as KiB (1024 times too small) or
    /// multiplied twice. (`reset_peak` lowers VmHWM, not ru_maxrss, hence
    /// the slack above.)
    #[test]
    #[cfg(target_os = "linux")]
    fn rusage_peak_agrees_with_proc() {
        let proc = super::ResidentMemory::from_proc().unwrap();
        let rusage = super::ResidentMemory::from_rusage().unwrap();
        let most = proc.peak_bytes.max(proc.current_bytes) * 256;
        assert!(
            (proc.current_bytes..=most).contains(&rusage.peak_bytes),
            "{} against {proc:?}",
            rusage.peak_bytes
        );
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
