//! The engine's own CPU kernels: quantized matrix multiplication over
//! weights repacked once at load ([`PackedMatrix`]), the activation
//! quantization it needs, attention over the KV cache ([`attention`]), and
//! one thread pool ([`pool`]).
//!
//! The vector tier is chosen at run time from the CPU's features
//! ([`Tier::detect`]), so one binary runs at its best on any x86-64 machine
//! (aarch64 has NEON everywhere);
//! `SHOWDOWN_KERNELS=portable|avx2|avx512|neon` forces a tier (tests and
//! benchmarks use it to run the AVX2 path on an AVX-512 machine), and
//! `SHOWDOWN_KERNELS=candle` uses candle's quantized matmul instead.
//!
//! Every tier computes the same bits: activations are quantized row by row,
//! integer sums are exact, and each output is summed over blocks in order
//! with the float steps of the scalar reference in [`formats`]. A row's
//! result therefore does not depend on how many rows are multiplied
//! together, on the thread count, or on the CPU tier; the tests check each
//! kernel against the reference on every tier the machine has.

pub mod attention;
pub mod elementwise;
pub mod formats;
mod packed;
pub mod pool;
mod portable;
pub mod quantize;
pub mod recurrent;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;

pub use formats::{ActFormat, WeightFormat};
pub use packed::{PackError, PackedMatrix};

/// Whose kernels multiply a CPU model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The engine's own ([`PackedMatrix`]), on the CPU's best tier.
    Engine,
    /// candle's `QMatMul`: the arithmetic candle-transformers' models use,
    /// so an architecture can be compared with them exactly, and a baseline
    /// for speed.
    Candle,
    /// The engine's kernels inside candle tensor operations, layer by
    /// layer, as the device builds run: the CPU's fused decoder is checked
    /// against it bit for bit.
    EngineLayerByLayer,
}

impl Default for Kernels {
    /// The engine's, unless `SHOWDOWN_KERNELS=candle`.
    fn default() -> Self {
        if Tier::candle_requested() {
            Kernels::Candle
        } else {
            Kernels::Engine
        }
    }
}

/// A kernel tier: which vector instructions the matmul uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Scalar code, any CPU.
    Portable,
    /// AVX2 + FMA + F16C (x86-64-v3), 8-column groups.
    Avx2,
    /// AVX-512 F + BW + VNNI, 16-column groups.
    Avx512,
    /// NEON (every aarch64 CPU), 8-column groups.
    Neon,
}

impl Tier {
    /// The best tier this CPU runs, unless `SHOWDOWN_KERNELS` names another
    /// one it supports.
    pub fn detect() -> Tier {
        static TIER: std::sync::OnceLock<Tier> = std::sync::OnceLock::new();
        *TIER.get_or_init(|| {
            let available = Tier::available();
            let forced = std::env::var("SHOWDOWN_KERNELS").ok().and_then(|name| {
                available
                    .iter()
                    .copied()
                    .find(|t| t.name() == name.trim().to_ascii_lowercase())
            });
            forced.unwrap_or(*available.last().expect("portable is always available"))
        })
    }

    /// Whether `SHOWDOWN_KERNELS=candle` asks for candle's quantized matmul
    /// instead of the engine's kernels.
    pub fn candle_requested() -> bool {
        std::env::var("SHOWDOWN_KERNELS").is_ok_and(|v| v.trim().eq_ignore_ascii_case("candle"))
    }

    /// Every tier this CPU can run, slowest first.
    pub fn available() -> Vec<Tier> {
        #[allow(unused_mut)]
        let mut tiers = vec![Tier::Portable];
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            tiers.push(Tier::Avx2);
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
            {
                tiers.push(Tier::Avx512);
            }
        }
        #[cfg(target_arch = "aarch64")]
        if std::arch::is_aarch64_feature_detected!("neon") {
            tiers.push(Tier::Neon);
        }
        tiers
    }

    /// The tier's name, as `SHOWDOWN_KERNELS` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Tier::Portable => "portable",
            Tier::Avx2 => "avx2",
            Tier::Avx512 => "avx512",
            Tier::Neon => "neon",
        }
    }

    /// Output columns per packed group.
    pub fn group_width(self) -> usize {
        match self {
            #[cfg(target_arch = "x86_64")]
            Tier::Avx2 => avx2::G,
            #[cfg(target_arch = "x86_64")]
            Tier::Avx512 => avx512::G,
            #[cfg(target_arch = "aarch64")]
            Tier::Neon => neon::G,
            _ => 8,
        }
    }
}

/// The CPU features this process's kernels use, for reports and CI logs:
/// the chosen tier and the relevant flags the CPU has.
pub fn cpu_features() -> String {
    #[allow(unused_mut)]
    let mut flags: Vec<&str> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! probe {
            ($($f:tt),*) => {
                $(if std::arch::is_x86_feature_detected!($f) { flags.push($f); })*
            };
        }
        probe!(
            "avx2",
            "fma",
            "f16c",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "avx512vnni",
            "avxvnni"
        );
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        flags.push("neon");
    }
    let tier = if Tier::candle_requested() {
        "candle"
    } else {
        Tier::detect().name()
    };
    format!("kernels {tier} ({})", flags.join(" "))
}
