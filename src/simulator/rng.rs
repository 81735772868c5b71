//! A tiny deterministic generator and keyed digest.
//!
//! The simulator must produce the same world for the same seed on every
//! platform and every version of its dependencies, so it uses its own
//! SplitMix64 instead of `rand`'s generators (whose streams may change between
//! releases).

/// SplitMix64 finaliser: a fast, well-distributed 64-bit mixer.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SplitMix64 stream.
#[derive(Clone, Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A stream that depends on every bit of `seed`.
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(mix(seed ^ 0x5EED_5EED_5EED_5EED))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 when `n` is 0); the modulo bias is irrelevant here.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// One element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// A braced, version-4 shaped uuid (`{xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx}`).
    pub(crate) fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        format!(
            "{{{:08x}-{:04x}-4{:03x}-{:x}{:03x}-{:012x}}}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            8 + (b >> 62),
            (b >> 48) & 0xfff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// A keyed 128-bit digest used to sign page tokens.
///
/// Not cryptographic: it only has to make tampered or made-up tokens fail, as
/// Bitbucket's signed cursors do, and stay stable across runs with the same
/// seed so a saved `next` link keeps working against a restarted simulator.
pub(crate) fn mac(key: u64, data: &[u8]) -> [u8; 16] {
    let mut h1 = mix(key ^ 0x0123_4567_89AB_CDEF);
    let mut h2 = mix(key.rotate_left(29) ^ 0xFEDC_BA98_7654_3210);
    for chunk in data.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        h1 = mix(h1 ^ w).wrapping_add(h2);
        h2 = mix(h2.wrapping_add(w).rotate_left(17) ^ h1);
    }
    h1 = mix(h1 ^ data.len() as u64);
    h2 = mix(h2 ^ h1);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&h1.to_le_bytes());
    out[8..].copy_from_slice(&h2.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_sensitive() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(1);
                move |_| r.next_u64()
            })
            .collect();
        let c = Rng::new(2).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        assert_ne!(mac(1, b"abc"), mac(1, b"abd"));
        assert_ne!(mac(1, b"abc"), mac(2, b"abc"));
        let u = Rng::new(3).uuid();
        assert_eq!(u.len(), 38);
        assert!(u.starts_with('{') && u.ends_with('}'));
    }
}
