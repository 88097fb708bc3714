//! The compiled decision core: `fatigue/engine.py` ported for speed, verified equal to it by
//! tests/unit/test_native_parity.py (the Python engine stays the oracle and the only engine of the worker).

use pyo3::prelude::*;

// the engine allocates many small strings and vectors per event; mimalloc is markedly faster at that than glibc
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod engine;
pub mod events;
pub mod json;
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
    Ok(())
}
