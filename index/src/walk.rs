//! The SIMD kernels and per-thread scratch that graph walks share (`crate::hnsw`): the dot
//! product (cosine on unit vectors) over 32 lanes — two AVX-512 or four AVX2 FMA registers, the
//! same bits either way, or portable code — of two f32 vectors or of an f32 query and an IEEE
//! half vector (widened exactly in registers: the same bits as the f32 product with the widened
//! vector), a cache prefetch hint, a total order on similarities, and visited marks reset by a
//! stamp.

use half::f16;
use std::cell::RefCell;
use std::cmp::Ordering;

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// Hints the cache to fetch `b` (its addresses are inside the slice; a hint never faults).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse")]
#[inline]
pub(crate) fn prefetch<T>(b: &[T]) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for line in b.chunks((64 / size_of::<T>().max(1)).max(1)) {
        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f") && has_avx2_fma()
}

/// AVX2/FMA and the F16C half-to-float conversion.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_f16c() -> bool {
    has_avx2_fma() && std::is_x86_feature_detected!("f16c")
}

/// A similarity ordered totally (NaN never occurs: vectors are finite unit vectors).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Sim(pub(crate) f32);

impl Eq for Sim {}

impl PartialOrd for Sim {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Sim {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Per-thread visited marks, reused across searches: a node is visited when its mark equals
/// the current stamp, so clearing is one increment.
#[derive(Default)]
pub(crate) struct Visited {
    marks: Vec<u32>,
    stamp: u32,
}

impl Visited {
    /// Marks node `n` visited under `stamp`; false when it already was.
    #[inline(always)]
    pub(crate) fn mark(&mut self, n: u32, stamp: u32) -> bool {
        let i = n as usize;
        if i >= self.marks.len() {
            // A node published after the walk began.
            self.marks.resize(i + 1 + self.marks.len() / 8, 0);
        }
        let m = &mut self.marks[i];
        if *m == stamp {
            return false;
        }
        *m = stamp;
        true
    }

    /// A fresh stamp, the marks sized for `n` nodes.
    pub(crate) fn next(&mut self, n: usize) -> u32 {
        if self.marks.is_empty() {
            // Zeroed memory: pages no walk touches are never written.
            self.marks = vec![0; n];
        } else if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.marks.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        self.stamp
    }
}

thread_local! {
    pub(crate) static VISITED: RefCell<Visited> = RefCell::new(Visited::default());
}

/// This thread's visited marks, taken out for one walk (an empty set if a walk already holds
/// them); [`put_visited`] gives them back.
pub(crate) fn take_visited() -> Visited {
    VISITED.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Gives back the marks [`take_visited`] took.
pub(crate) fn put_visited(v: Visited) {
    VISITED.with(|c| *c.borrow_mut() = v);
}

/// The norm of `v` when it is not a unit vector to within 1e-6 (and not zero): what to divide
/// its components by to make it one again (a stored vector read back, an f16 one widened).
/// The vector kernel: a plain sequential sum was a tenth of an open's time.
pub(crate) fn off_unit(v: &[f32]) -> Option<f32> {
    let norm = dot(v, v).sqrt();
    (norm > 0.0 && (norm - 1.0).abs() > 1e-6).then_some(norm)
}

/// Dot product (cosine for unit vectors), with AVX2/FMA when the CPU has them.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU supports the features `dot_avx512` is compiled for (checked above).
            #[allow(unsafe_code)]
            return unsafe { dot_avx512(a, b) };
        }
        if has_avx2_fma() {
            // SAFETY: the CPU supports the features `dot_avx2` is compiled for (checked above).
            #[allow(unsafe_code)]
            return unsafe { dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// [`dot`] compiled for AVX-512 (callers compiled with these features inline it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
pub(crate) fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    finish(a, b, wide_avx512(a, b), f32::mul_add)
}

/// [`dot`] compiled for AVX2/FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(crate) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    finish(a, b, wide_avx2(a, b), f32::mul_add)
}

/// [`wide`] in four 256-bit FMA registers (lane `p` of the result is lane `p % 8` of register
/// `p / 8`: the same sums in the same order).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn wide_avx2(a: &[f32], b: &[f32]) -> [f32; 32] {
    use std::arch::x86_64::{_mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};
    let n = a.len().min(b.len()) / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in (0..n).step_by(32) {
        for (j, r) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 <= n, within both slices.
            #[allow(unsafe_code)]
            let (x, y) = unsafe { (_mm256_loadu_ps(a.as_ptr().add(i + 8 * j)), _mm256_loadu_ps(b.as_ptr().add(i + 8 * j))) };
            *r = _mm256_fmadd_ps(x, y, *r);
        }
    }
    let mut out = [0.0f32; 32];
    for (j, r) in acc.iter().enumerate() {
        // SAFETY: `out` has room for 8 floats at 8j.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr().add(8 * j), *r)
        };
    }
    out
}

/// [`wide`] in two 512-bit FMA registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn wide_avx512(a: &[f32], b: &[f32]) -> [f32; 32] {
    use std::arch::x86_64::{_mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps};
    let n = a.len().min(b.len()) / 32 * 32;
    let mut acc = [_mm512_setzero_ps(); 2];
    for i in (0..n).step_by(32) {
        for (j, r) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16j + 16 <= n, within both slices.
            #[allow(unsafe_code)]
            let (x, y) = unsafe { (_mm512_loadu_ps(a.as_ptr().add(i + 16 * j)), _mm512_loadu_ps(b.as_ptr().add(i + 16 * j))) };
            *r = _mm512_fmadd_ps(x, y, *r);
        }
    }
    let mut out = [0.0f32; 32];
    for (j, r) in acc.iter().enumerate() {
        // SAFETY: `out` has room for 16 floats at 16j.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_storeu_ps(out.as_mut_ptr().add(16 * j), *r)
        };
    }
    out
}

/// [`dot`] without SIMD or FMA (CPUs without AVX2/FMA).
pub(crate) fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b, |x, y, acc| acc + x * y)
}

/// Dot product of an f32 vector and an IEEE half vector: exactly [`dot`] of `a` and `b`
/// widened to f32 (the widening is exact), without widening `b` in memory.
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU supports the features `dot_f16_avx512` is compiled for (checked above).
            #[allow(unsafe_code)]
            return unsafe { dot_f16_avx512(a, b) };
        }
        if has_avx2_f16c() {
            // SAFETY: the CPU supports the features `dot_f16_avx2` is compiled for (checked above).
            #[allow(unsafe_code)]
            return unsafe { dot_f16_avx2(a, b) };
        }
    }
    dot_f16_portable(a, b)
}

/// [`dot_f16`] compiled for AVX-512 (`vcvtph2ps` widens 16 halves per instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
pub(crate) fn dot_f16_avx512(a: &[f32], b: &[f16]) -> f32 {
    use std::arch::x86_64::{
        __m256i, _mm256_loadu_si256, _mm512_cvtph_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };
    let n = a.len().min(b.len()) / 32 * 32;
    let mut acc = [_mm512_setzero_ps(); 2];
    for i in (0..n).step_by(32) {
        for (j, r) in acc.iter_mut().enumerate() {
            // SAFETY: i + 16j + 16 <= n, within both slices (16 halves are 32 bytes).
            #[allow(unsafe_code)]
            let (x, y) = unsafe {
                (
                    _mm512_loadu_ps(a.as_ptr().add(i + 16 * j)),
                    _mm512_cvtph_ps(_mm256_loadu_si256(b.as_ptr().add(i + 16 * j).cast::<__m256i>())),
                )
            };
            *r = _mm512_fmadd_ps(x, y, *r);
        }
    }
    let mut lanes = [0.0f32; 32];
    for (j, r) in acc.iter().enumerate() {
        // SAFETY: `lanes` has room for 16 floats at 16j.
        #[allow(unsafe_code)]
        unsafe {
            _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * j), *r)
        };
    }
    finish_f16(a, b, n, lanes)
}

/// [`dot_f16`] compiled for AVX2/FMA/F16C (`vcvtph2ps` widens 8 halves per instruction).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(crate) fn dot_f16_avx2(a: &[f32], b: &[f16]) -> f32 {
    use std::arch::x86_64::{
        __m128i, _mm256_cvtph_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps, _mm_loadu_si128,
    };
    let n = a.len().min(b.len()) / 32 * 32;
    let mut acc = [_mm256_setzero_ps(); 4];
    for i in (0..n).step_by(32) {
        for (j, r) in acc.iter_mut().enumerate() {
            // SAFETY: i + 8j + 8 <= n, within both slices (8 halves are 16 bytes).
            #[allow(unsafe_code)]
            let (x, y) = unsafe {
                (_mm256_loadu_ps(a.as_ptr().add(i + 8 * j)), _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8 * j).cast::<__m128i>())))
            };
            *r = _mm256_fmadd_ps(x, y, *r);
        }
    }
    let mut lanes = [0.0f32; 32];
    for (j, r) in acc.iter().enumerate() {
        // SAFETY: `lanes` has room for 8 floats at 8j.
        #[allow(unsafe_code)]
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * j), *r)
        };
    }
    finish_f16(a, b, n, lanes)
}

/// [`dot_f16`] without SIMD (CPUs without AVX2/FMA/F16C).
pub(crate) fn dot_f16_portable(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len()) / 32 * 32;
    let mut lanes = [0.0f32; 32];
    for (x, y) in a[..n].chunks_exact(32).zip(b[..n].chunks_exact(32)) {
        for i in 0..32 {
            lanes[i] = x[i].mul_add(y[i].to_f32(), lanes[i]);
        }
    }
    finish_f16(a, b, n, lanes)
}

/// [`finish`] for a half `b`: its last (fewer than 32) components widened on the stack.
#[inline(always)]
fn finish_f16(a: &[f32], b: &[f16], n: usize, lanes: [f32; 32]) -> f32 {
    let len = a.len().min(b.len());
    let mut tail = [0.0f32; 32];
    for (t, h) in tail.iter_mut().zip(&b[n..len]) {
        *t = h.to_f32();
    }
    finish(&a[n..len], &tail[..len - n], lanes, f32::mul_add)
}

/// The dot product, portable: [`wide`] then [`finish`].
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[f32], fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    finish(a, b, wide(a, b, &fma), fma)
}

/// Over the leading blocks of 32 components, 32 independent sums: lane `p` accumulates the
/// products at positions `p`, `p + 32`, … (the vector paths keep them in four 256-bit or two
/// 512-bit registers, so the fused multiply-adds overlap instead of waiting on one register).
#[inline(always)]
fn wide(a: &[f32], b: &[f32], fma: impl Fn(f32, f32, f32) -> f32) -> [f32; 32] {
    let n = a.len().min(b.len()) / 32 * 32;
    let mut lanes = [0.0f32; 32];
    for (x, y) in a[..n].chunks_exact(32).zip(b[..n].chunks_exact(32)) {
        for i in 0..32 {
            lanes[i] = fma(x[i], y[i], lanes[i]);
        }
    }
    lanes
}

/// The rest of the dot product after [`wide`]: the remaining components 8 at a time, then one
/// by one, and a fixed reduction order — so every path that fuses (portable `mul_add`, AVX2/FMA,
/// AVX-512) gives the same bits.
#[inline(always)]
fn finish(a: &[f32], b: &[f32], lanes: [f32; 32], fma: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let len = a.len().min(b.len());
    let n = len / 32 * 32;
    let (ra, rb) = (&a[n..len], &b[n..len]);
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (ra.chunks_exact(8), rb.chunks_exact(8));
    let (ta, tb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = fma(x[i], y[i], acc[i]);
        }
    }
    for i in 0..8 {
        acc[i] += (lanes[i] + lanes[i + 16]) + (lanes[i + 8] + lanes[i + 24]);
    }
    let mut tail = 0.0;
    for (x, y) in ta.iter().zip(tb) {
        tail = fma(*x, *y, tail);
    }
    (acc[0] + acc[4]) + (acc[1] + acc[5]) + (acc[2] + acc[6]) + (acc[3] + acc[7]) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_a_plain_sum() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 40, 50, 64, 100, 512, 515] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            assert!((dot(&a, &b) as f64 - want).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn every_fused_path_gives_the_same_bits() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 40, 50, 64, 100, 512, 515] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let b: Vec<f32> = (0..n).map(|i| ((i * 13 % 17) as f32 - 8.0) / 9.0).collect();
            let portable = dot_lanes(&a, &b, f32::mul_add);
            #[cfg(target_arch = "x86_64")]
            {
                if has_avx2_fma() {
                    #[allow(unsafe_code)]
                    // SAFETY: checked just above.
                    let v = unsafe { dot_avx2(&a, &b) };
                    assert_eq!(v.to_bits(), portable.to_bits(), "avx2, n={n}");
                }
                if has_avx512() {
                    #[allow(unsafe_code)]
                    // SAFETY: checked just above.
                    let v = unsafe { dot_avx512(&a, &b) };
                    assert_eq!(v.to_bits(), portable.to_bits(), "avx512, n={n}");
                }
            }
        }
    }

    #[test]
    fn the_half_product_is_the_f32_product_of_the_widened_vector_on_every_path() {
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 40, 50, 64, 100, 512, 515] {
            let a: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 7.0).collect();
            let h: Vec<f16> = (0..n).map(|i| f16::from_f32(((i * 13 % 17) as f32 - 8.0) / 9.0)).collect();
            let wide: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
            let want = dot_lanes(&a, &wide, f32::mul_add);
            assert_eq!(dot_f16_portable(&a, &h).to_bits(), want.to_bits(), "portable, n={n}");
            assert_eq!(dot_f16(&a, &h).to_bits(), want.to_bits(), "dispatched, n={n}");
            #[cfg(target_arch = "x86_64")]
            {
                if has_avx2_f16c() {
                    #[allow(unsafe_code)]
                    // SAFETY: checked just above.
                    let v = unsafe { dot_f16_avx2(&a, &h) };
                    assert_eq!(v.to_bits(), want.to_bits(), "avx2, n={n}");
                }
                if has_avx512() {
                    #[allow(unsafe_code)]
                    // SAFETY: checked just above.
                    let v = unsafe { dot_f16_avx512(&a, &h) };
                    assert_eq!(v.to_bits(), want.to_bits(), "avx512, n={n}");
                }
            }
        }
    }

    #[test]
    fn visited_stamps_wrap_without_stale_marks() {
        let mut v = Visited { marks: vec![u32::MAX; 4], stamp: u32::MAX };
        let s = v.next(4);
        assert_eq!(s, 1);
        assert!(v.marks.iter().all(|m| *m == 0));
    }
}
