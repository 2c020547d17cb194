//! A global allocator that counts the allocations of one thread while it
//! asks to be counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Forwards to [`System`] and counts allocations (alloc, alloc_zeroed,
/// realloc; not dealloc) made inside [`count_allocations`] on that thread.
/// Per thread, so other tests running at the same time do not disturb a
/// count. Declare it in the test binary:
/// `#[global_allocator] static ALLOCATOR: CountingAllocator = CountingAllocator;`
pub struct CountingAllocator;

thread_local! {
    /// Allocations made by this thread while counting is on (`None`: off).
    static ALLOCATIONS: Cell<Option<u64>> = const { Cell::new(None) };
}

fn note_allocation() {
    // `try_with`: the allocator can run while thread locals are torn down.
    let _ = ALLOCATIONS.try_with(|c| {
        if let Some(n) = c.get() {
            c.set(Some(n + 1));
        }
    });
}

/// Runs `f` and returns its result with the number of allocations this
/// thread made meanwhile. Counts zero unless [`CountingAllocator`] is the
/// test binary's global allocator.
pub fn count_allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let outer = ALLOCATIONS.with(|c| c.replace(Some(0)));
    assert!(outer.is_none(), "count_allocations does not nest");
    let out = f();
    let n = ALLOCATIONS.with(|c| c.replace(None)).unwrap_or(0);
    (out, n)
}

// SAFETY: every method forwards to `System` with the caller's arguments,
// which upholds `GlobalAlloc`'s contract; counting touches only a const
// thread local, which never allocates.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: ptr came from System (every allocation goes there) with
        // this layout; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr came from System.alloc* with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}
