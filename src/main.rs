fn main() -> std::process::ExitCode {
    dnaflow::cli::main()
}
