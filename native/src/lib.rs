//! The compiled decision core: `fatigue/engine.py` ported for speed, verified equal to it by
//! tests/unit/test_native_parity.py and tests/unit/test_partition.py (the Python engine stays the oracle).

use pyo3::prelude::*;

// the engine allocates many small strings and vectors per event: mimalloc is markedly faster at that than glibc,
// and its plain entry points faster than the aligned ones the mimalloc crate calls for every allocation
#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

struct Allocator;

/// Every mimalloc block is aligned to 8 bytes at least (its smallest block and size classes are multiples of 8):
/// requests for no more than that use its plain calls.
fn plain(layout: std::alloc::Layout) -> bool {
    layout.align() <= 8
}

// SAFETY: every block comes from and goes back to mimalloc; plain() keeps the plain calls to layouts whose
// alignment mimalloc's plain allocation guarantees.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout) {
            libmimalloc_sys::mi_malloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        if plain(layout) {
            libmimalloc_sys::mi_zalloc(layout.size()).cast()
        } else {
            libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        libmimalloc_sys::mi_free(ptr.cast());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        if plain(layout) {
            libmimalloc_sys::mi_realloc(ptr.cast(), new_size).cast()
        } else {
            libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
        }
    }
}

pub mod engine;
pub mod events;
pub mod json;
pub mod partition;
pub mod policy;
pub mod replay;
pub mod state;
pub mod timeutil;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(events::parse_fast_py, m)?)?;
    m.add_function(wrap_pyfunction!(events::parse_fast_general_py, m)?)?;
    m.add_function(wrap_pyfunction!(events::format_ms_py, m)?)?;
    m.add_function(wrap_pyfunction!(events::format_duration_py, m)?)?;
    m.add_function(wrap_pyfunction!(events::parse_iso_ms_py, m)?)?;
    m.add_class::<replay::NativeReplay>()?;
    m.add_class::<partition::NativePartition>()?;
    Ok(())
}
