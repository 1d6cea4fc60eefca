// Training allocates and frees many same-sized tensors per step; mimalloc keeps them in
// its pools where glibc's malloc hands big blocks back to the OS and page-faults them in again.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dnaflow::pages::for_this_process();
    dnaflow::cli::main()
}
