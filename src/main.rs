// Training allocates and frees many same-sized tensors per step; mimalloc keeps them in
// its pools where glibc's malloc hands big blocks back to the OS and page-faults them in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its index in `mi_option_e`, mimalloc.h of v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's `mi_option_allow_thp` (its index in `mi_option_e` of v3, the version built).
const MI_OPTION_ALLOW_THP: libmimalloc_sys::mi_option_t = 43;

fn main() -> std::process::ExitCode {
    // By default mimalloc returns memory unused for 10 ms to the OS. A training step frees its
    // activations and allocates them again one step (tens of ms) later, so each step paid
    // page faults and zeroing for memory it had just given back (~10 % of CPU training time).
    // Never purging keeps them; peak memory is unchanged, as the same buffers are reused.
    // `MIMALLOC_PURGE_DELAY` in the environment still decides when it is set.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a plain integer option; mimalloc reads options at any time.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    // mimalloc asks for transparent huge pages on its arenas, and the first touch of each 2 MiB
    // page zeroes all of it: planning 100,000 steps spent a quarter of its time in the kernel
    // zeroing pages it then barely used. 4 KiB pages are zeroed as they are used.
    // `MIMALLOC_ALLOW_THP` in the environment still decides when it is set.
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: as above; it applies to the memory mimalloc maps from now on.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ALLOW_THP, 0) };
        // The arena mapped before main was already madvised for huge pages.
        dnaflow::exec::shell::disable_transparent_huge_pages();
    }
    dnaflow::cli::main()
}
