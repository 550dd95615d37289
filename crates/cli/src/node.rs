//! `idunno node`: run a node in the foreground.

use std::path::PathBuf;

use clap::Args;
use idunno_node::{Node, NodeConfig, NodeOptions};

use crate::error::CliError;

#[derive(Args)]
pub struct NodeArgs {
    /// TOML config file; flags override its fields.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster's name: nodes of other clusters are ignored [default: idunno].
    #[arg(long)]
    cluster: Option<String>,
    /// Stable node id (default: kept in the data folder, random at first start).
    #[arg(long)]
    id: Option<u64>,
    /// RPC (TCP) and SWIM (UDP) address [default: 127.0.0.1:8088].
    #[arg(long)]
    addr: Option<String>,
    /// HTTP address for the dashboard and JSON API [default: RPC port + 1000].
    #[arg(long)]
    http: Option<String>,
    /// Where the node keeps its state [default: .idunno/node-PORT].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Join the group through these seeds: HOST:PORT, repeated or comma-separated; a host may be a
    /// DNS name with several addresses. Tried until one answers.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Give up joining after this many milliseconds and exit [default: keep trying].
    #[arg(long)]
    join_timeout_ms: Option<u64>,
    /// The address other nodes reach this one at (HOST:PORT), when it is not --addr
    /// (NAT, containers, --addr 0.0.0.0:PORT).
    #[arg(long)]
    advertise: Option<String>,
    /// The node that founds the group (HOST:PORT): the node whose --advertise (or --addr) is this
    /// starts a new group when it has no state, though given --join. Lets every node of a
    /// deployment take the same flags.
    #[arg(long)]
    founder: Option<String>,
    /// Target size of the coordinator group (Raft voters) [default: 7].
    #[arg(long)]
    voters: Option<usize>,
    /// Copies of every SDFS file [default: 4].
    #[arg(long)]
    replicas: Option<usize>,
    /// Drop this fraction of outgoing SWIM datagrams (loss injection for tests and benchmarks).
    #[arg(long, hide = true)]
    udp_loss: Option<f64>,
    /// Queries this node runs at once (one thread each). Default 1.
    #[arg(long)]
    slots: Option<usize>,
    /// Speak this wire protocol instead of this build's (tests of mixed versions).
    #[arg(long, hide = true)]
    wire_protocol: Option<u8>,
    /// Serve /metrics without the token (with a cluster secret) [default: false].
    #[arg(long)]
    metrics_public: bool,
}

pub async fn run(args: NodeArgs, secrets: &crate::secret::SecretArgs) -> Result<(), CliError> {
    let file = match &args.config {
        Some(p) => NodeOptions::from_file(p).map_err(|e| CliError::bad_input(e.to_string()))?,
        None => NodeOptions::default(),
    };
    let flags = NodeOptions {
        cluster: args.cluster,
        id: args.id,
        addr: args.addr,
        http: args.http,
        data_dir: args.data_dir,
        join: (!args.join.is_empty()).then(|| idunno_node::config::Seeds::Many(args.join)),
        join_timeout_ms: args.join_timeout_ms,
        advertise: args.advertise,
        founder: args.founder,
        udp_loss: args.udp_loss,
        voters: args.voters,
        replicas: args.replicas,
        sdfs: None,
        swim: None,
        raft: None,
        worker: args.slots.map(|slots| idunno_jobs::WorkerConfig { slots, ..Default::default() }),
        secret_file: secrets.secret_file.clone(),
        accept_secret_files: (!secrets.accept.is_empty()).then(|| secrets.accept.clone()),
        tls: None,
        metrics_public: args.metrics_public.then_some(true),
        wire_protocol: args.wire_protocol,
    };
    let config = NodeConfig::resolve(file.overridden_by(flags)).map_err(|e| CliError::bad_input(e.to_string()))?;
    let node = Node::start(config).await?;
    node.run().await?;
    Ok(())
}
