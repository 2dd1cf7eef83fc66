//! The `host` command; everything lives in `host::cli`.
fn main() -> std::process::ExitCode {
    host::cli::main()
}
