//! Counter-based random numbers: `value = f(seed, index)`.
//!
//! Why our own and not `rand`: the dropout mask must be bit-identical on the CPU and CUDA engines
//! (so the engines can be compared exactly and a resumed run repeats the same masks), which needs a
//! generator that a CUDA kernel can evaluate at any index without state; and the whole training RNG
//! state must fit in a checkpoint as a couple of integers. SplitMix64's finaliser (Steele et al.,
//! 2014) is the mixing function; `csrc/` implements the same three lines.

/// SplitMix64's increment: 2^64 / golden ratio, odd, so that successive counters land far
/// apart before mixing (Steele et al. 2014; the same constant as Java's SplittableRandom).
pub const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The two multipliers of SplitMix64's finaliser (Stafford's "Mix13" variant).
const MIX_MUL_1: u64 = 0xbf58_476d_1ce4_e5b9;
const MIX_MUL_2: u64 = 0x94d0_49bb_1331_11eb;

/// Offsets the label of a forked stream (MurmurHash2's multiplier in the high word) so that a
/// fork's seed never equals a value of the parent's own sequence at the same index.
const FORK_SALT: u64 = 0x5bd1_e995_0000_0000;

/// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(MIX_MUL_1);
    z = (z ^ (z >> 27)).wrapping_mul(MIX_MUL_2);
    z ^ (z >> 31)
}

/// The `index`-th 64-bit value of stream `seed`.
#[inline]
pub fn hash(seed: u64, index: u64) -> u64 {
    mix64(seed ^ mix64(index.wrapping_add(GOLDEN_GAMMA)))
}

/// Bits of a uniform f32 in [0, 1): its 24-bit significand, so every value is exact.
const F32_UNIFORM_BITS: u32 = 24;
/// Bits of a uniform f64 in [0, 1): its 53-bit significand.
const F64_UNIFORM_BITS: u32 = 53;

/// Uniform in [0, 1) with 24 bits of precision (exactly representable in f32).
#[inline]
pub fn uniform_at(seed: u64, index: u64) -> f32 {
    (hash(seed, index) >> (64 - F32_UNIFORM_BITS)) as f32
        * (1.0 / (1u64 << F32_UNIFORM_BITS) as f32)
}

/// Whether element `index` survives dropout with drop probability `p` (the rule both engines use).
#[inline]
pub fn dropout_keep(seed: u64, index: u64, p: f32) -> bool {
    uniform_at(seed, index) >= p
}

/// A small sequential generator (state = seed + counter) for initialisation, shuffling and
/// augmentation. Its whole state is two integers, so checkpoints can store it exactly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rng {
    pub seed: u64,
    pub counter: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { seed, counter: 0 }
    }

    /// An independent stream derived from this one's seed and a label (e.g. a layer index).
    pub fn fork(&self, stream: u64) -> Self {
        Rng::new(hash(self.seed, stream ^ FORK_SALT))
    }

    pub fn next_u64(&mut self) -> u64 {
        let v = hash(self.seed, self.counter);
        self.counter += 1;
        v
    }

    /// Uniform in [0, 1) (53 bits).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> (64 - F64_UNIFORM_BITS)) as f64
            * (1.0 / (1u64 << F64_UNIFORM_BITS) as f64)
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Standard normal by Box-Muller (one value per call; simple over fast).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln never sees 0
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Skips the next `n` values of [`Rng::normal`] (each uses two counters), so a slice of a
    /// long normal stream can be drawn without drawing what comes before it.
    pub fn skip_normals(&mut self, n: u64) {
        self.counter += 2 * n;
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_is_in_range_and_centred() {
        let n = 100_000;
        let mean: f64 = (0..n).map(|i| uniform_at(7, i) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        assert!((0..n).all(|i| (0.0..1.0).contains(&uniform_at(7, i))));
    }

    #[test]
    fn normal_has_unit_variance() {
        let mut r = Rng::new(3);
        let xs: Vec<f64> = (0..100_000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }

    #[test]
    fn dropout_keeps_the_stated_fraction() {
        let kept = (0..100_000).filter(|&i| dropout_keep(11, i, 0.5)).count();
        assert!((kept as f64 / 100_000.0 - 0.5).abs() < 0.01);
    }
}
