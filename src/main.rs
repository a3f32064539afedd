use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = capfilt::cli::Cli::parse();
    capfilt::cli::init_logging(&cli);

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(capfilt::cli::execute(cli)) {
        Ok(code) => code,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
