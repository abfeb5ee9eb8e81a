//! The `fedmesh` binary: parses the command line, sets up logging, and hands each subcommand to
//! its module in `fedmesh_node::commands`.

use clap::Parser;
use fedmesh_node::cli::{Cli, Command, LogFormat};
use fedmesh_node::commands;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Keygen(args) => commands::keygen::run(&args),
        Command::Node(args) => commands::node::run(&args, false),
        Command::Coordinator(args) => commands::node::run(&args, true),
        Command::Job(command) => commands::job::run(command),
        Command::Model(command) => commands::model::run(command),
        Command::TrainLocal(args) => commands::train_local::run(&args),
        Command::Status(api) => commands::status::run(&api),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, and keeps the latest warnings and errors for `fedmesh status`.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,libp2p=warn"));
    let registry =
        tracing_subscriber::registry().with(filter).with(fedmesh_node::recent::RecentLayer);
    let text = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Text => registry.with(text).init(),
        LogFormat::Json => registry.with(text.json()).init(),
    }
}
