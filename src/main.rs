//! The `serfnode` binary: parses the command line, sets up logging and the
//! runtime, turns signals into a shutdown, and hands over to the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use serfnode::cli::{Cli, Command};
use serfnode::config::Config;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    one_malloc_arena();
    let mut cli = Cli::parse();
    // Secrets leave the environment (its bytes too) before any thread or
    // child exists: handlers, the agent and the application do not inherit
    // them. (A parent keeps the key for the daemon it runs.)
    match &mut cli.command {
        Command::Agent(args) => {
            args.encrypt_key =
                serfnode::containers::secrets::take_env(serfnode::cluster::keys::KEY_ENV)
                    .map(serfnode::cluster::keys::Secret);
        }
        Command::Child(args) => match serfnode::containers::child::prepare() {
            Ok(token) => args.token = token,
            Err(e) => {
                eprintln!("serfnode child: make the wrapper undumpable: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
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
                on_signals(shutdown.clone(), cfg.mount.clone())?;
                serfnode::daemon::run(cfg, shutdown).await.map(|()| 0)
            }
            Command::Parent(_) => {
                serfnode::containers::supervisor::run(std::env::args_os().collect()).await
            }
            Command::Child(args) => {
                serfnode::containers::child::run(serfnode::config::child_config(args)?).await
            }
            // The operator commands block on file reads: off the runtime.
            op => tokio::task::spawn_blocking(move || operate(op)).await?,
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives threads that allocate at once arenas of their own. The
/// daemon decodes the member list on a runtime thread and renders files on
/// FUSE threads; with 10,000 members that held 151 MiB resident (77 MiB in
/// one arena) and delayed the first read of a changed member's file by
/// 13-19 ms (0.2-0.3 ms in one arena); see BENCHMARKS.md, scale. The static
/// musl build shipped in the image has one heap anyway. Set before any
/// thread.
///
/// Blocks of 256 KiB and more (a full `members` reply, its decoded list,
/// a rendered `serfnodes_by_id.json`) are mapped on their own and given
/// back when freed: glibc's default raises that threshold to the largest
/// block freed so far, after which such blocks fragment the heap between
/// the rare full reads (10,000 members: 49 MiB resident instead of ~40).
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt(3) with integer arguments, before any other thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

/// Runs an operator command; its exit code.
fn operate(command: Command) -> anyhow::Result<i32> {
    use serfnode::operator;
    let mut out = std::io::stdout().lock();
    let done = match command {
        Command::Status { json, at } => {
            // A health check: 1 while the agent is not followed (unreachable,
            // the view stale, or not reached yet), as for an error.
            let healthy = operator::status(&at.mount, json, &mut out)?;
            return Ok(i32::from(!healthy));
        }
        Command::Members { json, at } => operator::members(&at.mount, json, &mut out),
        Command::Event { name, payload, at } => {
            operator::event(&at.mount, &name, payload.as_deref())
        }
        Command::Query {
            name,
            payload,
            role,
            nodes,
            timeout,
            at,
        } => operator::query(
            &at.mount,
            &name,
            payload.as_deref(),
            role,
            nodes,
            timeout,
            &mut out,
        ),
        Command::Watch { from, at } => {
            serfnode::operator::watch::watch(&at.mount, from, &mut out, || false)
                .map_err(Into::into)
        }
        Command::Render { source, at } => {
            operator::render(&at.mount, &source, std::io::stdin().lock(), &mut out)
        }
        Command::Keys(args) => {
            tokio::runtime::Handle::current().block_on(serfnode::operator::keys::run(
                &args,
                std::io::stdin().lock(),
                &mut out,
                &mut std::io::stderr(),
            ))
        }
        Command::Agent(_) | Command::Parent(_) | Command::Child(_) => {
            unreachable!("daemons are run by main")
        }
    };
    done.map(|()| 0)
}

/// Every signal that asks a process to stop starts the same orderly
/// shutdown: SIGTERM (`kill`, `docker stop`, systemd), SIGINT (Ctrl-C),
/// SIGHUP (its terminal or ssh session closed; left unhandled it killed the
/// daemon and left a mount answering ENOTCONN) and SIGQUIT (Ctrl-\\; a
/// core dump helps nobody here, and would leave the mount dead too).
///
/// A later SIGTERM, SIGINT or SIGQUIT, sent at least [`PATIENCE`] after the
/// first, detaches the mount (a lazy unmount cannot block) and exits at
/// once: someone is tired of waiting. Sooner, it is the same request
/// delivered twice (a terminal's Ctrl-C reaches the whole foreground job,
/// and a script that traps it signals its children once more), and heeding
/// it would skip the leave. SIGHUP never hurries the stop: a hangup comes
/// from the shell and the kernel alike.
fn on_signals(shutdown: CancellationToken, mount: PathBuf) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        let mut first: Option<tokio::time::Instant> = None;
        loop {
            let (name, hurries) = tokio::select! {
                _ = term.recv() => ("SIGTERM", true),
                _ = int.recv() => ("SIGINT", true),
                _ = quit.recv() => ("SIGQUIT", true),
                _ = hup.recv() => ("SIGHUP", false),
            };
            match first {
                None => {
                    tracing::info!("{name}: stopping");
                    first = Some(tokio::time::Instant::now());
                    shutdown.cancel();
                }
                Some(at) if hurries && at.elapsed() >= PATIENCE => {
                    tracing::warn!(
                        "second signal ({name}): detaching {} and exiting now",
                        mount.display()
                    );
                    if let Err(e) = serfnode_fs::detach(&mount) {
                        tracing::warn!("detach {}: {e}", mount.display());
                    }
                    std::process::exit(130);
                }
                Some(_) => tracing::info!("{name}: already stopping"),
            }
        }
    });
    Ok(())
}

/// How long after the first stop signal another one still counts as the
/// same request (see [`on_signals`]).
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);
