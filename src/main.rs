//! The `bbcrawl` binary: parses the command line, sets up logging, runs the
//! command ([`cli`]) and exits with its code (SPEC section 9): the error
//! says its own ([`cli::CliError::exit_code`]).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    bbcrawl::panic::install();
    let cli = cli::Cli::parse();
    cli::init_logging(&cli.global);
    // The actor system's runtime (a tokio current-thread runtime) runs
    // every command; the writer actor gets its own thread.
    let system = actix::System::new();
    match system.block_on(cli::run(cli)) {
        Ok(code) => ExitCode::from(code),
        // A reader that stopped reading (`| head`) is a normal end.
        Err(err) if err.is_broken_pipe() => ExitCode::SUCCESS,
        Err(err) => {
            // Error text may quote a server or stored data: never raw to a
            // terminal.
            eprintln!("error: {}", bbcrawl::human::printable(&err.text()));
            ExitCode::from(err.exit_code())
        }
    }
}
