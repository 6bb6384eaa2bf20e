//! SplitMix64 used as a counter-based generator: `mix(x)` is SplitMix64's output for state x,
//! so draw j of a stream keyed k is `mix(k + j)` — any draw computed on its own, in any order,
//! by any worker, and reproduced exactly by other implementations (the collector's bootstrap,
//! docs/results.md; the Hessian probes, docs/landscape.md).

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output for state `x` (all arithmetic modulo 2^64).
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `len` signs (±1) from the stream keyed `key`: bit b of draw j is sign 64j + b (1 → +1).
pub fn signs(key: u64, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let draw = mix(key.wrapping_add((i / 64) as u64));
            if draw >> (i % 64) & 1 == 1 { 1.0 } else { -1.0 }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_splitmix64() {
        // SplitMix64 from state 0: its first outputs (Vigna's reference implementation).
        assert_eq!(mix(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix(GOLDEN), 0x6e78_9e6a_a1b9_65f4);
        let s = signs(7, 1000);
        let plus = s.iter().filter(|&&v| v == 1.0).count();
        assert!((400..600).contains(&plus), "{plus} of 1000 are +1");
        assert_eq!(s, signs(7, 1000));
    }
}
