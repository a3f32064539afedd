use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any other thread starts, so that every thread's heap gets the settings.
    capfilt_workers::allocator::tune_for_inference();

    // Clients built without an explicit provider (async-nats' TLS) need a process default.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let cli = capfilt::cli::Cli::parse();
    capfilt::cli::init_logging(&cli);
    let json_logs = matches!(cli.log_format, capfilt::cli::LogFormat::Json);

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
            // Errors may quote an input's URL; its password stays out of the log.
            let message = capfilt::redact::redact_urls(&format!("{error:#}"));
            // One line per error: a JSON record for log collectors, plain text for people.
            if json_logs {
                tracing::error!("{message}");
            } else {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}
