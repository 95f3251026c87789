//! The `pusher-cutover` binary. The command line, its subcommands
//! (`serve`, `validate`, `report`), the logging they set up and their exit
//! codes are the library's: [`pusher_cutover::cli`].

use std::process::ExitCode;

/// The process's allocator: mimalloc, built without transparent huge pages
/// (Cargo.toml says why; BENCHMARKS.md, "The allocator", has the
/// measurements). The library leaves the choice to the binary: tests and
/// embedders keep their own. `--no-default-features` leaves it out, for
/// the comparison with the system allocator.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    allocator::purge_freed_memory_soon();
    pusher_cutover::cli::main()
}

/// mimalloc's options, as the binary sets them.
#[cfg(feature = "mimalloc")]
mod allocator;
