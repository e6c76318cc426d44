//! The statistics behind `showdown compare`, self-contained so that their
//! numbers can be checked by hand: Fisher's exact test from the hypergeometric
//! distribution, the Mann–Whitney U test (normal approximation with tie and
//! continuity corrections), medians, and a seeded bootstrap interval for a ratio
//! of medians. No floating-point library beyond `std`.

use serde::Serialize;

/// ln(n!) by summing logarithms (exact enough for the table sizes of eval suites).
pub fn ln_factorial(n: u64) -> f64 {
    (2..=n).map(|k| (k as f64).ln()).sum()
}

fn ln_choose(n: u64, k: u64) -> f64 {
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// One-sided Fisher's exact test for a drop in pass count.
///
/// The 2×2 table is base (passed, failed) against head (passed, failed). With
/// the margins fixed, head's pass count is hypergeometric; the p-value is the
/// probability of head passing this few or fewer: P(X ≤ head_passed).
pub fn fisher_drop_p(
    base_passed: u64,
    base_failed: u64,
    head_passed: u64,
    head_failed: u64,
) -> f64 {
    let passes = base_passed + head_passed;
    let total = passes + base_failed + head_failed;
    let head_n = head_passed + head_failed;
    if total == 0 || head_n == 0 || head_n == total {
        return 1.0;
    }
    let low = head_n.saturating_sub(total - passes);
    let denominator = ln_choose(total, head_n);
    let p: f64 = (low..=head_passed.min(passes))
        .map(|x| (ln_choose(passes, x) + ln_choose(total - passes, head_n - x) - denominator).exp())
        .sum();
    p.min(1.0)
}

/// The Mann–Whitney U test of `head` against `base`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MannWhitney {
    /// U of the head sample: the count of (head, base) pairs where head is
    /// larger, ties counting ½.
    pub u: f64,
    /// The z score of U, with tie and continuity corrections (0 when every
    /// value is equal).
    pub z: f64,
    /// Two-sided p-value from the normal approximation.
    pub p: f64,
}

/// Mann–Whitney U of `head` against `base`: two-sided, normal approximation
/// with the tie correction of the variance and a continuity correction of ½,
/// as `scipy.stats.mannwhitneyu(head, base, method="asymptotic")`. `None` when
/// either sample is empty.
pub fn mann_whitney(head: &[f64], base: &[f64]) -> Option<MannWhitney> {
    let (n1, n2) = (head.len(), base.len());
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let mut all: Vec<(f64, bool)> = head
        .iter()
        .map(|&v| (v, true))
        .chain(base.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let mut rank_sum_head = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && all[j].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let rank = (i + 1 + j) as f64 / 2.0;
        let t = (j - i) as f64;
        tie_term += t * t * t - t;
        rank_sum_head += rank * all[i..j].iter().filter(|(_, h)| *h).count() as f64;
        i = j;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_head - n1f * (n1f + 1.0) / 2.0;
    let mu = n1f * n2f / 2.0;
    let variance = n1f * n2f / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    if variance <= 0.0 {
        return Some(MannWhitney { u, z: 0.0, p: 1.0 });
    }
    let distance = ((u - mu).abs() - 0.5).max(0.0);
    let z = distance / variance.sqrt() * (u - mu).signum();
    let p = erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0);
    Some(MannWhitney { u, z, p })
}

/// The complementary error function: erf's Taylor series below 2, the
/// continued fraction for erfc (evaluated by Lentz's method) above, so that
/// tail probabilities keep their relative precision.
pub fn erfc(x: f64) -> f64 {
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.0 {
        return 1.0 - erf_series(x);
    }
    // Lentz's continued fraction for erfc: converges fast for x ≥ 2.
    let tiny = 1e-300;
    let mut f = x;
    if f == 0.0 {
        f = tiny;
    }
    let mut c = f;
    let mut d = 0.0;
    for k in 1..500 {
        let a = k as f64 / 2.0;
        d = x + a * d;
        if d == 0.0 {
            d = tiny;
        }
        c = x + a / c;
        if c == 0.0 {
            c = tiny;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / (f * std::f64::consts::PI.sqrt())
}

/// erf by its Taylor series (for small x).
fn erf_series(x: f64) -> f64 {
    let mut sum = 0.0_f64;
    let mut term = x;
    let mut n = 0.0_f64;
    while term.abs() > 1e-17 * sum.abs().max(1e-300) {
        sum += term / (2.0 * n + 1.0);
        n += 1.0;
        term *= -x * x / n;
        if n > 200.0 {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

/// The median (mean of the middle two for even lengths); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(median_sorted(&sorted))
}

fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// SplitMix64: a tiny, fixed generator, so that bootstrap intervals are the
/// same on every machine and with every version of every dependency.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (n > 0), by Lemire's multiply-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }
}

/// A percentile bootstrap interval for median(head) / median(base):
/// `resamples` resamplings of each sample with replacement, from `seed`, and
/// the `(1 − level)/2` and `(1 + level)/2` quantiles of the ratios. `None` when
/// a sample is empty or no resample had a positive base median.
pub fn bootstrap_median_ratio(
    head: &[f64],
    base: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    if head.is_empty() || base.is_empty() || resamples == 0 {
        return None;
    }
    let mut rng = SplitMix64::new(seed);
    let mut ratios = Vec::with_capacity(resamples);
    let mut h = vec![0.0; head.len()];
    let mut b = vec![0.0; base.len()];
    for _ in 0..resamples {
        for slot in h.iter_mut() {
            *slot = head[rng.below(head.len())];
        }
        for slot in b.iter_mut() {
            *slot = base[rng.below(base.len())];
        }
        h.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let denominator = median_sorted(&b);
        if denominator > 0.0 {
            ratios.push(median_sorted(&h) / denominator);
        }
    }
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        let position = q * (ratios.len() - 1) as f64;
        let (lo, hi) = (position.floor() as usize, position.ceil() as usize);
        ratios[lo] + (ratios[hi] - ratios[lo]) * (position - lo as f64)
    };
    Some((quantile((1.0 - level) / 2.0), quantile((1.0 + level) / 2.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erfc_matches_known_values() {
        // erfc(0) = 1; erfc(1) = 0.157299207050285…; erfc(3) = 2.20904969985854e-5.
        assert!((erfc(0.0) - 1.0).abs() < 1e-15);
        assert!((erfc(1.0) - 0.157_299_207_050_285_1).abs() < 1e-13);
        assert!((erfc(3.0) / 2.209_049_699_858_544e-5 - 1.0).abs() < 1e-10);
        assert!((erfc(0.3) - 0.671_373_240_540_872_8).abs() < 1e-13);
        assert!((erfc(-1.0) - 1.842_700_792_949_715).abs() < 1e-13);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn splitmix_is_fixed() {
        // The reference sequence for seed 0 (from the SplitMix64 paper's code).
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }
}
