//! The global allocator of the `kit-service` binary: mimalloc for small
//! blocks (up to [`SMALL_MAX`]), the system allocator for medium ones, and its
//! own mapped blocks, on huge pages and shared by all threads, for large ones.
//!
//! A producer turn or a unary result allocates Arrow buffers of many
//! megabytes. Left to glibc, two things go wrong with them:
//!
//! - each is faulted in 4 KiB at a time (a 25 MB column is 6,100 page faults,
//!   each zeroing a page). Linux keeps huge pages opt-in
//!   (`transparent_hugepage=madvise` is the common default), so large blocks
//!   are mapped 2 MiB-aligned and marked `MADV_HUGEPAGE`: the kernel faults
//!   them 2 MiB at a time;
//! - a freed block of up to 32 MiB stays in the arena of the thread that
//!   freed it (glibc raises its mmap threshold to the largest block freed, and
//!   every thread that frees one gets its own arena), so the process keeps up
//!   to one batch per async worker and pool thread that ever freed one: the
//!   compressed producer stream peaked at 1.10x its payload that way.
//!
//! So blocks of [`LARGE_MIN`] bytes and more (with an alignment of at most a
//! page) bypass malloc: they are mapped here and, when freed, kept in one
//! process-wide cache of at most [`CACHE_BYTES`] (the most recently freed
//! first), whatever thread frees or allocates them, and unmapped beyond that.
//! A producer's next batch reuses the pages of the previous one, already
//! faulted in, and the memory held for reuse is bounded for the whole
//! process instead of per thread. Growing a large block is `mremap` (no
//! copy). Where huge pages are off (`never`) the advice is ignored. On other
//! systems (macOS, the BSDs) this is the system allocator unchanged.
//!
//! This is the workspace's one `unsafe` module: `GlobalAlloc` is an unsafe
//! trait. The workspace lint is `deny`, not `forbid`, so that this file alone
//! can allow it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};

/// Blocks of at most this many bytes come from mimalloc on Linux: a request's
/// ~90 small allocations (hyper's buffers and header maps, metadata strings,
/// Arrow arrays of a few rows) cost a third of their glibc price there
/// (docs/benchmarks.md, "Small blocks from mimalloc"). Larger ones stay with
/// glibc, which returns freed medium blocks to the kernel at once, where
/// mimalloc kept them: with mimalloc for every size below [`LARGE_MIN`] the
/// producer stream's peak RSS rose from 0.68x to 1.11x its payload.
pub const SMALL_MAX: usize = 64 << 10;
/// Blocks at least this large are mapped by this allocator (four huge pages:
/// smaller blocks would round to mostly partial huge pages).
pub const LARGE_MIN: usize = 8 << 20;
/// Freed large blocks kept for reuse, in bytes, across all threads: one
/// 25 MB producer batch of two columns (two 12 MiB blocks) fits.
pub const CACHE_BYTES: usize = 32 << 20;
const HUGE_PAGE: usize = 2 << 20;
/// The largest alignment a mapped block guarantees without more work.
const PAGE: usize = 4096;

pub struct HugePageAlloc;

/// Which allocator serves a block of this size and alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    /// mimalloc (Linux; glibc elsewhere).
    Small,
    /// glibc's malloc.
    Medium,
    /// A mapped block of this allocator's own.
    Large,
}

fn tier(size: usize, align: usize) -> Tier {
    if !cfg!(target_os = "linux") {
        Tier::Medium
    } else if size <= SMALL_MAX {
        Tier::Small
    } else if size >= LARGE_MIN && align <= PAGE {
        Tier::Large
    } else {
        Tier::Medium
    }
}

/// mimalloc's settings, made before its first block.
#[cfg(target_os = "linux")]
mod small {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e` (the
    /// `libmimalloc-sys` version is pinned with its C sources; the Rust
    /// bindings name only older options).
    pub const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    /// `mi_option_arena_reserve` (in KiB), numbered as above.
    pub const ARENA_RESERVE: libmimalloc_sys::mi_option_t = 23;
    /// The first arena mimalloc reserves: 64 MiB instead of its 1 GiB. Only
    /// small blocks come here ([`super::SMALL_MAX`]), and an arena's bitmaps
    /// (one per size class and state) grow with its size: zeroing the 1 GiB
    /// arena's took 42 page faults, a tenth of the process's start. Further
    /// arenas are reserved as needed, each larger than the last.
    pub const ARENA_RESERVE_KIB: std::ffi::c_long = 64 * 1024;

    static CONFIGURED: AtomicBool = AtomicBool::new(false);

    /// Turns eager arena commit off: on Linux mimalloc commits its arenas
    /// up front by default and so never gives their freed pages back, which
    /// kept a 100 MB unary result's peak RSS at 0.24x its payload (0.11x with
    /// glibc) and the producer stream's at 0.86x (0.72x). With it off, freed
    /// pages are purged and those were 0.14x and 0.71x.
    #[inline]
    pub fn configure() {
        if !CONFIGURED.load(Ordering::Relaxed) {
            configure_now();
        }
    }

    #[cold]
    fn configure_now() {
        // SAFETY: setting an option stores a number; it allocates nothing.
        // Two threads racing here both store the same value.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) };
        // SAFETY: as above.
        unsafe { libmimalloc_sys::mi_option_set(ARENA_RESERVE, ARENA_RESERVE_KIB) };
        CONFIGURED.store(true, Ordering::Relaxed);
    }

    /// Every mimalloc block is aligned to a word at least.
    const WORD: usize = std::mem::size_of::<usize>();
    /// mimalloc places power-of-two blocks up to this size at a multiple of
    /// their size (`MI_PAGE_MAX_START_BLOCK_ALIGN2`).
    const NATURAL_MAX: usize = 4096;

    /// The size to ask mimalloc for. A block aligned to more than a word is
    /// rounded up to a power of two of at least its alignment (up to
    /// [`NATURAL_MAX`]): mimalloc hands such a block out of its free list
    /// with no search. Asked for less than its alignment (Arrow's buffers
    /// are 128-byte aligned, most of a small request's are a few bytes) or
    /// for a size whose free block happened to be misaligned, mimalloc would
    /// allocate `size + align` and return an interior pointer, which costs
    /// more to allocate and to free and wastes as much.
    #[inline]
    pub fn request(size: usize, align: usize) -> usize {
        if align <= WORD || size > NATURAL_MAX {
            size
        } else {
            size.max(align).next_power_of_two()
        }
    }

    /// # Safety
    /// As `GlobalAlloc::alloc` for a small layout.
    #[inline]
    pub unsafe fn alloc(layout: std::alloc::Layout, zeroed: bool) -> *mut u8 {
        use libmimalloc_sys as mi;
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: plain allocation calls; a word-aligned layout needs no
        // alignment argument (the cheaper entry point).
        unsafe {
            (match (align <= WORD, zeroed) {
                (true, false) => mi::mi_malloc(size),
                (true, true) => mi::mi_zalloc(size),
                (false, false) => mi::mi_malloc_aligned(request(size, align), align),
                (false, true) => mi::mi_zalloc_aligned(request(size, align), align),
            }) as *mut u8
        }
    }

    /// # Safety
    /// As `GlobalAlloc::dealloc` for a block of [`alloc`].
    #[inline]
    pub unsafe fn dealloc(ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` is a live mimalloc block (the caller's contract).
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    /// # Safety
    /// As `GlobalAlloc::realloc` for a block of [`alloc`], to a small size.
    #[inline]
    pub unsafe fn realloc(ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        use libmimalloc_sys as mi;
        let align = layout.align();
        // SAFETY: `ptr` is a live mimalloc block (the caller's contract).
        unsafe {
            (if align <= WORD {
                mi::mi_realloc(ptr.cast(), new_size)
            } else {
                mi::mi_realloc_aligned(ptr.cast(), request(new_size, align), align)
            }) as *mut u8
        }
    }
}

/// Elsewhere no block is small ([`tier`]); these keep the calls compiling.
#[cfg(not(target_os = "linux"))]
mod small {
    use std::alloc::{GlobalAlloc, Layout, System};

    pub fn configure() {}

    pub unsafe fn alloc(layout: Layout, zeroed: bool) -> *mut u8 {
        unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        }
    }

    pub unsafe fn dealloc(ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    pub unsafe fn realloc(ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The mapped length of a large block of `size` bytes: whole huge pages.
fn mapped_len(size: usize) -> usize {
    size.next_multiple_of(HUGE_PAGE)
}

/// A new block for `layout` from the allocator of its tier, zeroed if asked.
///
/// # Safety
/// As `GlobalAlloc::alloc`: `layout` has a non-zero size.
#[inline]
unsafe fn allocate(layout: Layout, zeroed: bool) -> *mut u8 {
    match tier(layout.size(), layout.align()) {
        Tier::Small => {
            small::configure();
            unsafe { small::alloc(layout, zeroed) }
        }
        Tier::Medium => {
            let ptr = if zeroed {
                unsafe { System.alloc_zeroed(layout) }
            } else {
                unsafe { System.alloc(layout) }
            };
            advise(ptr, layout.size());
            ptr
        }
        // A fresh mapping is zero already (and not faulted in yet).
        Tier::Large => large::alloc(mapped_len(layout.size()), zeroed),
    }
}

// SAFETY: small blocks go to mimalloc and medium ones to `System`, each freed
// and resized by the allocator that made it, because `dealloc`/`realloc` get
// back the layout a block was allocated with (the `GlobalAlloc` contract) and
// `tier` of that layout is the same; a resize across tiers is a new block, a
// copy and a free. A large block is a private anonymous mapping of
// `mapped_len(size)` bytes owned by exactly one live allocation or by the
// cache, never both, so the mapped length is recomputed exactly.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { allocate(layout, false) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { allocate(layout, true) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match tier(layout.size(), layout.align()) {
            Tier::Small => unsafe { small::dealloc(ptr, layout) },
            Tier::Medium => unsafe { System.dealloc(ptr, layout) },
            Tier::Large => unsafe { large::free(ptr, mapped_len(layout.size())) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        match (tier(layout.size(), align), tier(new_size, align)) {
            (Tier::Small, Tier::Small) => unsafe { small::realloc(ptr, layout, new_size) },
            (Tier::Medium, Tier::Medium) => {
                let new = unsafe { System.realloc(ptr, layout, new_size) };
                if new_size > layout.size() {
                    advise(new, new_size);
                }
                new
            }
            (Tier::Large, Tier::Large) => unsafe {
                large::remap(ptr, mapped_len(layout.size()), mapped_len(new_size))
            },
            _ => {
                // Crossing tiers either way: a new block, the contents
                // copied, the old one freed.
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, align) };
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

/// Large blocks: private anonymous mappings, 2 MiB-aligned when fresh, and a
/// small process-wide cache of freed ones.
#[cfg(target_os = "linux")]
mod large {
    use super::{CACHE_BYTES, HUGE_PAGE, madvise_huge_pages};
    use std::sync::Mutex;

    /// Freed blocks as (address, mapped length), oldest first.
    const SLOTS: usize = 8;
    struct Cache {
        blocks: [(usize, usize); SLOTS],
        count: usize,
        bytes: usize,
    }

    // A futex-based mutex: locking never allocates, so the allocator may use it.
    static CACHE: Mutex<Cache> = Mutex::new(Cache {
        blocks: [(0, 0); SLOTS],
        count: 0,
        bytes: 0,
    });

    fn cache() -> std::sync::MutexGuard<'static, Cache> {
        CACHE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A block of exactly `len` bytes: a cached one if there is one of that
    /// length (zeroed first if asked), else a fresh mapping.
    pub fn alloc(len: usize, zeroed: bool) -> *mut u8 {
        let reused = {
            let mut cache = cache();
            let found = cache.blocks[..cache.count]
                .iter()
                .rposition(|&(_, l)| l == len);
            found.map(|index| {
                let (address, _) = cache.blocks[index];
                let count = cache.count;
                cache.blocks.copy_within(index + 1..count, index);
                cache.count -= 1;
                cache.bytes -= len;
                address as *mut u8
            })
        };
        match reused {
            Some(ptr) if zeroed => {
                // SAFETY: the cached block is `len` mapped bytes nobody owns.
                unsafe { ptr.write_bytes(0, len) };
                ptr
            }
            Some(ptr) => ptr,
            None => map(len),
        }
    }

    /// Keeps the block for reuse, evicting the oldest past [`CACHE_BYTES`];
    /// unmaps what does not stay.
    ///
    /// # Safety
    /// `ptr` is a live block of `len` mapped bytes from [`alloc`] or [`remap`].
    pub unsafe fn free(ptr: *mut u8, len: usize) {
        let mut evicted = [(0usize, 0usize); SLOTS + 1];
        let mut evicted_count = 0;
        {
            let mut cache = cache();
            if len <= CACHE_BYTES {
                while cache.count > 0 && (cache.count == SLOTS || cache.bytes + len > CACHE_BYTES) {
                    evicted[evicted_count] = cache.blocks[0];
                    evicted_count += 1;
                    let count = cache.count;
                    cache.blocks.copy_within(1..count, 0);
                    cache.count -= 1;
                    cache.bytes -= evicted[evicted_count - 1].1;
                }
                let count = cache.count;
                cache.blocks[count] = (ptr as usize, len);
                cache.count += 1;
                cache.bytes += len;
            } else {
                evicted[0] = (ptr as usize, len);
                evicted_count = 1;
            }
        }
        for &(address, length) in &evicted[..evicted_count] {
            // SAFETY: the block left the cache (or never entered it); no one owns it.
            unsafe { libc::munmap(address as *mut libc::c_void, length) };
        }
    }

    /// Grows or shrinks a block, moving its pages rather than copying them.
    ///
    /// # Safety
    /// `ptr` is a live block of `old_len` mapped bytes.
    pub unsafe fn remap(ptr: *mut u8, old_len: usize, new_len: usize) -> *mut u8 {
        if old_len == new_len {
            return ptr;
        }
        // SAFETY: the caller owns the mapping; MREMAP_MAYMOVE keeps contents.
        let new = unsafe {
            libc::mremap(
                ptr as *mut libc::c_void,
                old_len,
                new_len,
                libc::MREMAP_MAYMOVE,
            )
        };
        if new == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        if new_len > old_len {
            madvise_huge_pages(new as usize, new_len);
        }
        new as *mut u8
    }

    /// A fresh private mapping of `len` bytes (a multiple of 2 MiB) on a
    /// 2 MiB boundary, marked for huge pages; null when the kernel refuses.
    fn map(len: usize) -> *mut u8 {
        let Some(padded) = len.checked_add(HUGE_PAGE) else {
            return std::ptr::null_mut();
        };
        // SAFETY: a new anonymous mapping; nothing else refers to it.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                padded,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        let raw = raw as usize;
        let start = raw.next_multiple_of(HUGE_PAGE);
        // SAFETY: trims the unaligned head and the tail of our own mapping.
        unsafe {
            if start > raw {
                libc::munmap(raw as *mut libc::c_void, start - raw);
            }
            let tail = raw + padded - (start + len);
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        madvise_huge_pages(start, len);
        start as *mut u8
    }

    /// Bytes held in the cache and how many blocks (for tests).
    #[cfg(test)]
    pub fn cached() -> (usize, usize) {
        let cache = cache();
        (cache.bytes, cache.count)
    }
}

/// Off Linux no large block is ever mapped (`tier` is never `Large`).
#[cfg(not(target_os = "linux"))]
mod large {
    pub fn alloc(_len: usize, _zeroed: bool) -> *mut u8 {
        unreachable!("large blocks are mapped only on Linux")
    }
    pub unsafe fn free(_ptr: *mut u8, _len: usize) {
        unreachable!("large blocks are mapped only on Linux")
    }
    pub unsafe fn remap(_ptr: *mut u8, _old: usize, _new: usize) -> *mut u8 {
        unreachable!("large blocks are mapped only on Linux")
    }
}

/// Marks the whole 2 MiB-aligned part of `[ptr, ptr + size)` for huge pages:
/// for a block malloc serves that is still large (its alignment is over a
/// page, so it is not mapped here).
fn advise(ptr: *mut u8, size: usize) {
    if let Some((start, length)) = huge_page_range(ptr, size) {
        madvise_huge_pages(start, length);
    }
}

/// The 2 MiB-aligned start and length inside `[ptr, ptr + size)`, if the
/// block is large enough to get the advice at all.
fn huge_page_range(ptr: *mut u8, size: usize) -> Option<(usize, usize)> {
    if ptr.is_null() || size < LARGE_MIN {
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

    /// The cache is process-wide: tests that allocate large blocks take turns.
    static LARGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn turn() -> std::sync::MutexGuard<'static, ()> {
        LARGE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn empty_cache() {
        // Fill the cache with blocks too large for it to keep anything else:
        // evicting makes room, and a block over the bound is not kept.
        let alloc = HugePageAlloc;
        let layout = Layout::from_size_align(CACHE_BYTES, 64).unwrap();
        unsafe {
            let block = alloc.alloc(layout);
            alloc.dealloc(block, layout);
            let again = alloc.alloc(layout);
            assert_eq!(
                again, block,
                "a block of the cache's size is kept and reused"
            );
            alloc.dealloc(again, layout);
            // Take it back out and unmap it by hand: now the cache is empty.
            let last = large::alloc(CACHE_BYTES, false);
            libc::munmap(last.cast(), CACHE_BYTES);
        }
        assert_eq!(large::cached(), (0, 0));
    }

    #[test]
    fn freed_large_blocks_are_reused_across_threads_within_the_bound() {
        let _turn = turn();
        empty_cache();
        let alloc = HugePageAlloc;
        // One producer column: 12.5 MB, mapped as 12 MiB.
        let layout = Layout::from_size_align(12_500_000, 64).unwrap();
        let first = unsafe { alloc.alloc(layout) };
        assert_eq!(
            first as usize % HUGE_PAGE,
            0,
            "fresh blocks are 2 MiB-aligned"
        );
        unsafe { first.write_bytes(0x5A, layout.size()) };
        // Freed on another thread, as a batch sent by a pool thread is.
        let address = first as usize;
        std::thread::spawn(move || unsafe { HugePageAlloc.dealloc(address as *mut u8, layout) })
            .join()
            .unwrap();
        assert_eq!(large::cached(), (12 << 20, 1));
        let reused = unsafe { alloc.alloc(layout) };
        assert_eq!(reused, first, "the next batch reuses the freed pages");
        assert_eq!(large::cached(), (0, 0));
        unsafe { alloc.dealloc(reused, layout) };

        // alloc_zeroed never hands out a dirty cached block.
        let zeroed = unsafe { alloc.alloc_zeroed(layout) };
        assert!(
            unsafe { std::slice::from_raw_parts(zeroed, layout.size()) }
                .iter()
                .all(|b| *b == 0)
        );

        // Four freed columns: only what fits in CACHE_BYTES stays (the newest).
        let blocks: Vec<*mut u8> = (0..3).map(|_| unsafe { alloc.alloc(layout) }).collect();
        unsafe { alloc.dealloc(zeroed, layout) };
        for block in &blocks {
            unsafe { alloc.dealloc(*block, layout) };
        }
        let (bytes, count) = large::cached();
        assert!(bytes <= CACHE_BYTES, "{bytes} bytes cached");
        assert_eq!((bytes, count), (24 << 20, 2));
        // A block larger than the whole cache is unmapped on free.
        let huge = Layout::from_size_align(CACHE_BYTES + 1, 64).unwrap();
        unsafe {
            let block = alloc.alloc(huge);
            alloc.dealloc(block, huge);
        }
        assert_eq!(large::cached(), (24 << 20, 2));
        empty_cache();
    }

    #[test]
    fn realloc_keeps_contents_across_the_thresholds() {
        let _turn = turn();
        let alloc = HugePageAlloc;
        // small -> medium -> large -> larger (mremap) -> medium -> small,
        // every step across a tier but one.
        let sizes = [
            1000,
            SMALL_MAX + 1,
            LARGE_MIN - 100,
            LARGE_MIN + 5,
            5 * LARGE_MIN,
            SMALL_MAX * 2,
            700,
        ];
        let tiers: Vec<Tier> = sizes.iter().map(|&size| tier(size, 8)).collect();
        if cfg!(target_os = "linux") {
            use Tier::{Large, Medium, Small};
            assert_eq!(tiers, [Small, Medium, Medium, Large, Large, Medium, Small]);
        }
        unsafe {
            let mut layout = Layout::from_size_align(sizes[0], 8).unwrap();
            let mut ptr = alloc.alloc(layout);
            for i in 0..layout.size() {
                *ptr.add(i) = (i % 251) as u8;
            }
            let mut filled = layout.size();
            for &size in &sizes[1..] {
                ptr = alloc.realloc(ptr, layout, size);
                assert!(!ptr.is_null());
                for i in 0..filled.min(size) {
                    assert_eq!(*ptr.add(i), (i % 251) as u8, "byte {i} at {size}");
                }
                for i in filled.min(size)..size {
                    *ptr.add(i) = (i % 251) as u8;
                }
                filled = size;
                layout = Layout::from_size_align(size, 8).unwrap();
            }
            alloc.dealloc(ptr, layout);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn aligned_small_blocks_are_whole_mimalloc_blocks() {
        assert_eq!(small::request(8, 128), 128);
        assert_eq!(small::request(24, 16), 32);
        assert_eq!(small::request(200, 64), 256);
        assert_eq!(small::request(4096, 128), 4096);
        assert_eq!(small::request(5000, 128), 5000, "beyond natural alignment");
        assert_eq!(small::request(24, 8), 24, "word-aligned: as asked");
        let alloc = HugePageAlloc;
        for align in [16usize, 32, 64, 128, 256, 4096] {
            for size in [1usize, 7, 24, 100, 129, 1000, 4096, 5000, SMALL_MAX] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let mut blocks = Vec::new();
                for round in 0..50 {
                    unsafe {
                        let zeroed = round % 2 == 0;
                        let ptr = if zeroed {
                            alloc.alloc_zeroed(layout)
                        } else {
                            alloc.alloc(layout)
                        };
                        assert!(!ptr.is_null());
                        assert_eq!(ptr as usize % align, 0, "{size} bytes at {align}");
                        if zeroed {
                            assert!((0..size).all(|i| *ptr.add(i) == 0));
                        }
                        if size <= 4096 {
                            // The block mimalloc handed out, not a pointer
                            // into a larger one (which it over-allocates
                            // when asked for less than the alignment).
                            let usable = libmimalloc_sys::mi_usable_size(ptr.cast());
                            assert_eq!(usable, small::request(size, align), "{size} at {align}");
                        }
                        ptr.write_bytes(0x5A, size);
                        blocks.push(ptr);
                    }
                }
                for ptr in blocks {
                    unsafe {
                        let grown = alloc.realloc(ptr, layout, size + 300);
                        assert_eq!(grown as usize % align, 0);
                        assert!((0..size).all(|i| *grown.add(i) == 0x5A));
                        let layout = Layout::from_size_align(size + 300, align).unwrap();
                        let shrunk = alloc.realloc(grown, layout, size.div_ceil(2));
                        assert_eq!(shrunk as usize % align, 0);
                        assert!((0..size.div_ceil(2)).all(|i| *shrunk.add(i) == 0x5A));
                        let layout = Layout::from_size_align(size.div_ceil(2), align).unwrap();
                        alloc.dealloc(shrunk, layout);
                    }
                }
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn mimalloc_reserves_small_arenas_and_does_not_commit_them_eagerly() {
        let alloc = HugePageAlloc;
        let layout = Layout::from_size_align(64, 8).unwrap();
        unsafe {
            let ptr = alloc.alloc(layout);
            alloc.dealloc(ptr, layout);
            // 2 ("on where the OS overcommits") is mimalloc's default.
            assert_eq!(libmimalloc_sys::mi_option_get(small::ARENA_EAGER_COMMIT), 0);
            // The neighbours of the number, to catch a renumbered enum.
            assert_eq!(
                libmimalloc_sys::mi_option_get(small::ARENA_EAGER_COMMIT + 1),
                1,
                "purge_decommits"
            );
            assert_eq!(
                libmimalloc_sys::mi_option_get(libmimalloc_sys::mi_option_show_errors),
                0
            );
            assert_eq!(
                libmimalloc_sys::mi_option_get(small::ARENA_RESERVE),
                small::ARENA_RESERVE_KIB
            );
            assert_eq!(
                libmimalloc_sys::mi_option_get(small::ARENA_RESERVE - 1),
                0,
                "destroy_on_exit"
            );
            assert_eq!(
                libmimalloc_sys::mi_option_get(small::ARENA_RESERVE + 1),
                1,
                "arena_purge_mult"
            );
        }
    }

    #[test]
    fn blocks_go_to_the_allocator_of_their_size() {
        if !cfg!(target_os = "linux") {
            assert_eq!(tier(16, 8), Tier::Medium);
            return;
        }
        assert_eq!(tier(1, 1), Tier::Small);
        assert_eq!(tier(SMALL_MAX, 8), Tier::Small);
        assert_eq!(tier(SMALL_MAX + 1, 8), Tier::Medium);
        assert_eq!(tier(LARGE_MIN - 1, 8), Tier::Medium);
        assert_eq!(tier(LARGE_MIN, PAGE), Tier::Large);
        // Over a page of alignment: malloc's, advised for huge pages.
        assert_eq!(tier(LARGE_MIN, 2 * PAGE), Tier::Medium);
    }

    #[test]
    fn only_the_aligned_middle_of_large_blocks_is_advised() {
        let at = |address: usize| address as *mut u8;
        assert_eq!(huge_page_range(std::ptr::null_mut(), LARGE_MIN), None);
        assert_eq!(huge_page_range(at(HUGE_PAGE), LARGE_MIN - 1), None);
        assert_eq!(
            huge_page_range(at(HUGE_PAGE), LARGE_MIN),
            Some((HUGE_PAGE, LARGE_MIN))
        );
        assert_eq!(
            huge_page_range(at(HUGE_PAGE + 1), LARGE_MIN),
            Some((2 * HUGE_PAGE, LARGE_MIN - HUGE_PAGE))
        );
    }

    #[test]
    fn large_and_small_blocks_round_trip() {
        let _turn = turn();
        let alloc = HugePageAlloc;
        for size in [
            16usize,
            4096,
            SMALL_MAX,
            SMALL_MAX + 1,
            LARGE_MIN - 1,
            LARGE_MIN,
            3 * LARGE_MIN + 12_345,
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
