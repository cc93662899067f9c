//! The `sessionctl` binary: parse, connect as the command needs, print, exit with a documented
//! status. The protocol work is in the `sessiond_client` library.

mod cli;
mod commands;
mod output;
mod transcript;

use std::process::ExitCode;
use std::time::Duration;

use sessiond_client::options::autostart_disabled_by_env;
use sessiond_client::{exit, ClientError, ConnectOptions};
use sessiond_proto::paths::{PathOverrides, Paths};

use cli::{CancelArgs, Cli, Command, LogArgs, PromoteArgs, RunArgs, SendArgs, SteerArgs};
use commands::turns::QueueAction;
use output::{report, Out};

fn main() -> ExitCode {
    let cli = match Cli::from_env() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let out = Out {
        json: cli.global.json,
    };
    let context = cli.global.context.as_deref();
    let result = options(&cli).and_then(|opts| match &cli.command {
        Command::Ping => commands::ping::run(&opts, &out).map(|()| 0),
        Command::Version => commands::version::run(&opts, &out).map(|()| 0),
        Command::Daemon(cmd) => commands::daemon::run(cmd, &opts, &out).map(|()| 0),
        Command::Send(SendArgs {
            args,
            project,
            no_queue,
            wait,
            follow,
        }) => commands::turns::send(
            &opts,
            &out,
            context,
            commands::turns::Send {
                args,
                project: project.as_ref(),
                no_queue: *no_queue,
                wait: *wait,
                follow: *follow,
                steer: None,
            },
        ),
        Command::Steer(SteerArgs {
            args,
            project,
            no_interrupt,
            wait,
            follow,
        }) => commands::turns::send(
            &opts,
            &out,
            context,
            commands::turns::Send {
                args,
                project: project.as_ref(),
                no_queue: false,
                wait: *wait,
                follow: *follow,
                steer: Some(*no_interrupt),
            },
        ),
        Command::Promote(PromoteArgs { turn }) => {
            commands::turns::promote(&opts, &out, turn).map(|()| 0)
        }
        Command::Log(LogArgs {
            target,
            turn,
            last,
            follow,
        }) => commands::turns::log(
            &opts,
            &out,
            context,
            target,
            turn.as_deref(),
            *last,
            *follow,
        )
        .map(|()| 0),
        Command::Export(target) => commands::turns::export(&opts, context, target).map(|()| 0),
        Command::Run(RunArgs {
            session,
            project,
            wait,
            command,
        }) => project
            .as_deref()
            .map(commands::sessions::absolute)
            .transpose()
            .and_then(|project| {
                commands::run::run(
                    &opts,
                    context,
                    commands::run::Run {
                        session: session.as_deref(),
                        project,
                        wait: *wait,
                        command,
                    },
                )
            }),
        Command::Queue(target) => {
            commands::turns::queue(&opts, &out, context, target, QueueAction::Show).map(|()| 0)
        }
        Command::Pause(target) => {
            commands::turns::queue(&opts, &out, context, target, QueueAction::Pause).map(|()| 0)
        }
        Command::Resume(target) => {
            commands::turns::queue(&opts, &out, context, target, QueueAction::Resume).map(|()| 0)
        }
        Command::Cancel(CancelArgs { turn }) => {
            commands::turns::cancel(&opts, &out, turn).map(|()| 0)
        }
        other => commands::sessions::run(other, &opts, &out, context).map(|()| 0),
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => ExitCode::from(report(&e, out.json)),
    }
}

fn options(cli: &Cli) -> Result<ConnectOptions, ClientError> {
    let g = &cli.global;
    let paths = Paths::resolve(&PathOverrides {
        runtime_dir: g.runtime_dir.clone(),
        state_dir: g.state_dir.clone(),
        config: g.config.clone(),
    })?;
    let mut opts = ConnectOptions::new(paths);
    opts.autostart = !g.no_autostart && !autostart_disabled_by_env();
    opts.client_name = format!("sessionctl {}", env!("CARGO_PKG_VERSION"));
    opts.timeout = Duration::from_secs_f64(g.timeout);
    Ok(opts)
}

/// Help and version go to stdout with status 0; real usage errors exit 2, as JSON on stderr
/// when --json was asked for.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    if std::env::args_os().any(|a| a == "--json") {
        let doc = serde_json::json!({
            "error": {
                "code": "usage",
                "message": e.render().to_string().trim_end(),
                "exit_code": exit::USAGE,
            }
        });
        eprintln!("{doc}");
        return ExitCode::from(exit::USAGE);
    }
    let _ = e.print();
    ExitCode::from(exit::USAGE)
}
