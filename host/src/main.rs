//! The `host` command: thin subcommands over the library crates (see
//! `cli`). The only place in the host where errors are `anyhow`.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
