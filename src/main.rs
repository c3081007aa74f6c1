use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use capgo_server::cli::{Cli, Command};
use capgo_server::config::Config;

/// mimalloc: glibc's allocator spent a fifth of the /updates hot path in malloc, free and
/// arena-lock contention between worker threads (see BENCHMARKS.md). Built without transparent
/// huge pages (`no_thp`): with them, pages it freed stayed resident in 2 MiB units and the RSS
/// under a busy device port was twice the live data.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // One TLS crypto provider for every client: aws-lc, which the AWS SDK needs.
    capgo_server::install_crypto_provider();
    let cli = Cli::parse();
    if let Some(Command::Crdgen) = cli.command {
        // Needs no configuration: CI and packaging run it anywhere.
        print!("{}", capgo_server::operator::crd::crd_yaml());
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_process(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("capgo-server: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("the Tokio runtime starts");
    let telemetry = capgo_server::telemetry::init(config.log_format, runtime.handle());
    let result: Result<(), capgo_server::error::BoxError> = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                Ok(capgo_server::app::serve(config, shutdown).await?)
            }
            Command::Migrate(args) => Ok(capgo_server::migrate::run(&config, &args).await?),
            Command::Crdgen => unreachable!("handled before configuration is read"),
        }
    });
    runtime.block_on(telemetry.shutdown());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e = capgo_server::error::Chain(e.as_ref());
            tracing::error!("{e}");
            eprintln!("capgo-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM can be handled");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
    shutdown.cancel();
}
