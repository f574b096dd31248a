//! The global allocator of the `kit-service` binary: the system allocator,
//! plus transparent huge pages for large blocks.
//!
//! A producer turn or a unary result allocates Arrow buffers of many
//! megabytes, and glibc serves each from a fresh `mmap` that is faulted in 4 KiB
//! at a time (a 25 MB column is 6,100 page faults, each zeroing a page). Linux
//! keeps huge pages opt-in (`transparent_hugepage=madvise` is the common
//! default), so blocks of [`HUGE_PAGE_MIN`] bytes and more are marked
//! `MADV_HUGEPAGE` right after allocation: the kernel then faults them 2 MiB at
//! a time. Nothing else changes: the memory is still returned on free, and
//! where huge pages are off (`never`) the advice is ignored. On other
//! systems (macOS, the BSDs) there is no such advice and this is the system
//! allocator unchanged.
//!
//! This is the workspace's one `unsafe` module: `GlobalAlloc` is an unsafe
//! trait. The workspace lint is `deny`, not `forbid`, so that this file alone
//! can allow it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks at least this large get the huge-page advice (four huge pages:
/// smaller blocks would round to mostly partial huge pages).
pub const HUGE_PAGE_MIN: usize = 8 << 20;
const HUGE_PAGE: usize = 2 << 20;

pub struct HugePageAlloc;

// SAFETY: every call goes to `System`; the advice only changes how the kernel
// backs pages the caller already owns.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // Zeroed large blocks come straight from `mmap`; advising after the
        // fact still helps, because nothing has touched (faulted) them yet.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        advise(ptr, layout.size());
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size > layout.size() {
            advise(new, new_size);
        }
        new
    }
}

/// Marks the whole 2 MiB-aligned part of `[ptr, ptr + size)` for huge pages.
fn advise(ptr: *mut u8, size: usize) {
    if let Some((start, length)) = huge_page_range(ptr, size) {
        madvise_huge_pages(start, length);
    }
}

/// The 2 MiB-aligned start and length inside `[ptr, ptr + size)`, if the
/// block is large enough to get the advice at all.
fn huge_page_range(ptr: *mut u8, size: usize) -> Option<(usize, usize)> {
    if ptr.is_null() || size < HUGE_PAGE_MIN {
        return None;
    }
    let start = (ptr as usize).next_multiple_of(HUGE_PAGE);
    let end = (ptr as usize + size) & !(HUGE_PAGE - 1);
    (end > start).then(|| (start, end - start))
}

/// `MADV_HUGEPAGE` is Linux's (transparent huge pages); `libc` defines it
/// only there, so every other OS gets the plain system allocator.
#[cfg(target_os = "linux")]
fn madvise_huge_pages(start: usize, length: usize) {
    // SAFETY: the range lies inside a live allocation; MADV_HUGEPAGE does
    // not change its contents. A failure (e.g. no THP support) is harmless.
    unsafe {
        libc::madvise(start as *mut libc::c_void, length, libc::MADV_HUGEPAGE);
    }
}

#[cfg(not(target_os = "linux"))]
fn madvise_huge_pages(_start: usize, _length: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_aligned_middle_of_large_blocks_is_advised() {
        let at = |address: usize| address as *mut u8;
        assert_eq!(huge_page_range(std::ptr::null_mut(), HUGE_PAGE_MIN), None);
        assert_eq!(huge_page_range(at(HUGE_PAGE), HUGE_PAGE_MIN - 1), None);
        assert_eq!(
            huge_page_range(at(HUGE_PAGE), HUGE_PAGE_MIN),
            Some((HUGE_PAGE, HUGE_PAGE_MIN))
        );
        assert_eq!(
            huge_page_range(at(HUGE_PAGE + 1), HUGE_PAGE_MIN),
            Some((2 * HUGE_PAGE, HUGE_PAGE_MIN - HUGE_PAGE))
        );
    }

    #[test]
    fn large_and_small_blocks_round_trip() {
        let alloc = HugePageAlloc;
        for size in [
            16usize,
            4096,
            HUGE_PAGE_MIN - 1,
            HUGE_PAGE_MIN,
            3 * HUGE_PAGE_MIN + 12_345,
        ] {
            let layout = Layout::from_size_align(size, 64).unwrap();
            unsafe {
                let ptr = alloc.alloc(layout);
                assert!(!ptr.is_null());
                ptr.write_bytes(0xA5, size);
                assert_eq!(*ptr.add(size - 1), 0xA5);
                let grown = alloc.realloc(ptr, layout, size * 2);
                assert_eq!(*grown.add(size - 1), 0xA5, "realloc keeps the contents");
                alloc.dealloc(grown, Layout::from_size_align(size * 2, 64).unwrap());
                let zeroed = alloc.alloc_zeroed(layout);
                assert!(
                    std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|b| *b == 0)
                );
                alloc.dealloc(zeroed, layout);
            }
        }
    }
}
