//! The `serfnode` binary: parses the command line, sets up logging and the
//! runtime, turns signals into a shutdown, and hands over to the library.

use std::process::ExitCode;

use clap::Parser;
use serfnode::cli::{Cli, Command};
use serfnode::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Agent(args) => {
                let cfg = Config::resolve(&args)?;
                let shutdown = CancellationToken::new();
                on_signals(shutdown.clone())?;
                serfnode::daemon::run(cfg, shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The first SIGTERM or SIGINT starts an orderly shutdown; a second one
/// exits at once.
fn on_signals(shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        for n in 0.. {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if n > 0 {
                tracing::warn!("second signal: exiting now");
                std::process::exit(130);
            }
            shutdown.cancel();
        }
    });
    Ok(())
}
