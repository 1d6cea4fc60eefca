//! How dnaflow's processes get memory pages: mimalloc keeps freed buffers, and transparent
//! huge pages are off except while training, with the user's own setting given back to the
//! steps dnaflow starts.
//!
//! Measured on a 2-core AMD EPYC: with huge pages, loading DNABERT-2's 117 M weights took
//! 1.2–1.4 s against 0.6 s without (each first touch zeroes 2 MiB) and an ESM-2 embedding
//! step ran anywhere from 7.7 to 9.8 sequences/s; planning 100,000 steps spent a quarter of
//! its time zeroing huge pages it barely used. A training step, which faults its memory in
//! once and then reuses it for every step, ran 3.5 % faster with them (fewer TLB misses).

use std::sync::atomic::{AtomicBool, Ordering};

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_e`, mimalloc.h of v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's `mi_option_allow_thp` (its index in `mi_option_e` of v3, the version built).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

/// Set when [`for_this_process`] switched huge pages off, so [`for_training`] may switch them
/// back on and the steps `exec::shell` starts get them back.
static THP_OFF_HERE: AtomicBool = AtomicBool::new(false);

/// Called first in `main`. mimalloc returns memory unused for 10 ms to the OS by default; a
/// training step frees its activations and allocates them again one step (tens of ms) later,
/// so each step paid page faults and zeroing for memory it had just given back (~10 % of CPU
/// training time): never purging keeps them, and peak memory is unchanged as the same buffers
/// are reused. Huge pages go off for the whole process: mimalloc reads its `allow_thp` when it
/// maps an arena, and its first 1 GiB arena was mapped (and madvised for huge pages) before
/// `main`, so the option alone came too late. `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ALLOW_THP`
/// in the environment still decide when set.
pub fn for_this_process() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
        return;
    }
    // SAFETY: as above; it applies to the memory mimalloc maps from now on.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
    // SAFETY: plain prctls on this process; they change no memory, only later page faults.
    let previous = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
    if previous == 0 && unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } == 0 {
        THP_OFF_HERE.store(true, Ordering::SeqCst);
    }
}

/// Huge pages back on for a training run (when [`for_this_process`] switched them off): its
/// buffers are faulted in once and reused every step, where fewer TLB misses pay.
pub fn for_training() {
    if THP_OFF_HERE.load(Ordering::SeqCst) {
        // SAFETY: as in `for_this_process`.
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 1);
            libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0);
        }
    }
}

/// For a child between fork and exec (async-signal-safe): the switch is inherited across
/// exec, so a step dnaflow starts gets the setting the user had, not dnaflow's.
pub(crate) fn restore_in_child(switched_off: bool) {
    if switched_off {
        // SAFETY: a plain prctl on the child.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 0, 0, 0, 0) };
    }
}

/// Whether this process switched huge pages off (read before forking a child).
pub(crate) fn switched_off() -> bool {
    THP_OFF_HERE.load(Ordering::SeqCst)
}
