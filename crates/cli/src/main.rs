//! `idunno`: `idunno node` runs a node; every other subcommand is a client
//! of a running node. This file parses flags and maps errors to exit codes
//! (2: bad usage or input, 1: anything else); the commands live beside it.

mod cluster;
mod coord;
mod demo;
mod error;
mod events;
mod fs;
mod job;
mod member;
mod node;
mod output;
mod secret;
mod serve;
mod status;
mod target;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::CliError;

#[derive(Parser)]
#[command(name = "idunno", version, about = "A distributed learning cluster")]
struct Cli {
    /// Node to talk to (HOST:PORT). Default: a live node of ./.idunno/cluster.json, else 127.0.0.1:8088.
    #[arg(long, global = true, env = "IDUNNO_NODE")]
    node: Option<String>,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The cluster secret [default: the secret of ./.idunno/cluster.json's cluster, if any].
    #[arg(long, global = true, env = "IDUNNO_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// A further secret to accept while keys rotate (repeatable).
    #[arg(long, global = true)]
    accept_secret_file: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node in the foreground.
    Node(node::NodeArgs),
    /// Start a local cluster of N node processes on loopback.
    Up(cluster::UpArgs),
    /// Stop the local cluster started by `up`.
    Down {
        /// The cluster's folder.
        #[arg(long, default_value = ".idunno")]
        dir: PathBuf,
    },
    /// Group membership.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// The answering node's view of the cluster.
    Status,
    /// SDFS, the cluster's replicated file system.
    #[command(subcommand)]
    Fs(fs::FsCommand),
    /// The whole story on a local 5-node cluster: two real jobs side by side, workers and the coordinator killed.
    Demo(demo::DemoArgs),
    /// Inference jobs: add, start, stop, status, results.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// Models served online to any client over the Open Inference Protocol (KServe v2: tritonclient).
    #[command(subcommand)]
    Serve(serve::ServeCommand),
    /// Train a model on the cluster (data-parallel over several workers), into SDFS.
    Train(train::TrainArgs),
    /// The coordinator's replicated state (low level).
    #[command(subcommand)]
    Coord(coord::CoordCommand),
    /// The cluster secret: make one, or print its certificate authority.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// The answering node's dashboard address, with a login token when the cluster has a secret.
    DashboardUrl,
    /// The cluster's timeline: deaths, elections, re-queued queries, repairs, job changes.
    Events(events::EventsArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors.
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let is_node = matches!(cli.command, Command::Node(_));
    init_logging(is_node);
    if is_node {
        idunno_node::limit_malloc_arenas();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::from(e.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    let out = output::Output { json: cli.json };
    let secrets = secret::SecretArgs { secret_file: cli.secret_file, accept: cli.accept_secret_file };
    // A node, `up`, `down` and `demo` find their secrets themselves;
    // `coord apply` writes commands as the nodes do, so it presents node
    // credentials (derived from the same secret); every other command is
    // a client.
    let role = match &cli.command {
        Command::Node(_) | Command::Up(_) | Command::Down { .. } | Command::Demo(_) | Command::Secret(_) => None,
        Command::Coord(coord::CoordCommand::Apply { .. }) => Some(idunno_auth::Role::Node),
        _ => Some(idunno_auth::Role::Client),
    };
    let ring = match role {
        Some(role) => secrets.install(role)?,
        None => None,
    };
    match cli.command {
        Command::Node(args) => node::run(args, &secrets).await,
        Command::Up(args) => cluster::up(args, &secrets, out).await,
        Command::Down { dir } => cluster::down(&dir, out).await,
        Command::Member(cmd) => member::run(cmd, cli.node, out).await,
        Command::Status => status::run(cli.node, out).await,
        Command::Coord(cmd) => coord::run(cmd, cli.node, out).await,
        Command::Fs(cmd) => fs::run(cmd, cli.node, out).await,
        Command::Job(cmd) => job::run(cmd, cli.node, out).await,
        Command::Serve(cmd) => serve::run(cmd, cli.node, out).await,
        Command::Train(args) => train::run(args, cli.node, out).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Secret(cmd) => secret::run(cmd, &secrets, out).await,
        Command::DashboardUrl => secret::dashboard_url(cli.node, ring.as_ref(), out).await,
        Command::Events(args) => events::run(args, cli.node, out).await,
    }
}

/// Nodes log at info (RUST_LOG overrides); clients only say what went wrong.
fn init_logging(is_node: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if is_node { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}
