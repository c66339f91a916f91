//! The thread pool the library runs on. Its size is the CPUs this process may use (its affinity
//! mask, so a container's or a Ray worker's share), `RAYON_NUM_THREADS` when set, or what
//! `set_num_threads` says. A pool made before a `fork` has no threads in the child, so the pool
//! remembers the process that made it and the child makes its own.
//!
//! Candle keeps a second, process-wide pool of its own for elementwise ops (`candle-bp-*`
//! threads), made once on first use and never again: a child forked after a model was loaded
//! waited forever on its missing threads. The package therefore runs Candle's elementwise ops
//! inline (`fork_safe_candle`); the heavy work (convolutions, matrix products) stays on the pool
//! above.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::{Arc, Mutex};

struct Pool {
    pid: u32,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
static THREADS: Mutex<Option<usize>> = Mutex::new(None);

fn default_threads() -> usize {
    let from_env = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0);
    from_env.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

fn threads() -> usize {
    let set = *THREADS.lock().unwrap_or_else(|e| e.into_inner());
    set.unwrap_or_else(default_threads)
}

/// Runs `f` on this process's pool of `threads()` threads.
pub(crate) fn install<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let pool = {
        let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let (pid, threads) = (std::process::id(), threads());
        match slot.as_ref() {
            Some(p) if p.pid == pid && p.threads == threads => p.pool.clone(),
            _ => {
                if let Some(old) = slot.take() {
                    if old.pid != pid {
                        // Its threads live in the parent only; dropping it would signal them.
                        std::mem::forget(old);
                    }
                }
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("oodbox-{i}"))
                    .build()
                    .expect("cannot start the oodbox thread pool");
                let pool = Arc::new(pool);
                *slot = Some(Pool {
                    pid,
                    threads,
                    pool: pool.clone(),
                });
                pool
            }
        }
    };
    pool.install(f)
}

/// Makes Candle's own worker pool empty, unless the user set `CANDLE_NUM_THREADS`: with no
/// workers, its ops run on the calling thread, which exists after a fork. Measured on the shapes
/// model: no slower per image (its elementwise ops are small next to the convolutions).
pub(crate) fn fork_safe_candle() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Sets how many threads oodbox computes on (in this process).
#[pyfunction]
pub fn set_num_threads(threads: usize) -> PyResult<()> {
    if threads == 0 {
        return Err(PyValueError::new_err("the thread count must be at least 1"));
    }
    *THREADS.lock().unwrap_or_else(|e| e.into_inner()) = Some(threads);
    // Candle and the convolution kernels split their work by this variable.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    Ok(())
}

/// How many threads oodbox computes on.
#[pyfunction]
pub fn get_num_threads() -> usize {
    threads()
}
