//! The `pusher-cutover` binary. The command line, its subcommands
//! (`serve`, `validate`, `report`), the logging they set up and their exit
//! codes are the library's: [`pusher_cutover::cli`].

use std::process::ExitCode;

fn main() -> ExitCode {
    pusher_cutover::cli::main()
}
