//! Memory prefetch hints: asking the processor to start loading what a stage will read a few records later.
//!
//! The replay's sequential stages walk records whose state lies scattered over hundreds of megabytes (the
//! de-duplication window, the account cache, the decoded lines another core wrote): most of their time went
//! to waiting for those loads one after the other (`perf`: the first read of an account's cache entry, of
//! its person ids, of a decoded line). Knowing the addresses a few records ahead lets those loads overlap
//! with the work on the current record. This module owns only the hint; it never reads or writes memory and
//! nothing may depend on it for correctness: on other architectures it does nothing.

/// The size of a cache line on the processors Caravan runs on.
const LINE: usize = 64;

/// Starts loading the first `lines` cache lines of `*value` (at most the value's own size).
#[inline(always)]
pub(crate) fn lines<T>(value: &T, lines: usize) {
    let start = (value as *const T).cast::<u8>();
    let size = std::mem::size_of::<T>().max(1);
    let mut offset = 0;
    while offset < size && offset / LINE < lines {
        at(start.wrapping_add(offset));
        offset += LINE;
    }
}

/// Starts loading the cache line at `p`, an address inside a live value.
#[inline(always)]
fn at(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `_mm_prefetch` is only a hint: it has no architectural effect and never faults, whatever the
    // address (Intel SDM, PREFETCHh); the callers pass addresses inside live references anyway. SSE, which
    // the intrinsic requires, is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
