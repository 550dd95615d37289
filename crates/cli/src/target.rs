//! Which node a client command talks to: `--node`/`IDUNNO_NODE`, else a
//! live node of `./.idunno/cluster.json`, else the default address.

use std::path::Path;
use std::time::Duration;

use idunno_rpc::NodeClient;
use tonic::transport::Channel;

use crate::cluster::ClusterFile;
use crate::error::CliError;

pub fn resolve(node: Option<String>) -> String {
    if let Some(n) = node {
        return n;
    }
    if let Ok(file) = ClusterFile::load(Path::new(".idunno"))
        && let Some(n) = file.nodes.iter().find(|n| crate::cluster::is_running(n.pid))
    {
        return n.rpc.clone();
    }
    idunno_node::config::DEFAULT_ADDR.to_string()
}

/// Every node worth trying, best first: the one named, else all live
/// nodes of `./.idunno/cluster.json`, else the default address.
pub fn candidates(node: Option<String>) -> Vec<String> {
    if let Some(n) = node {
        return vec![n];
    }
    if let Ok(file) = ClusterFile::load(Path::new(".idunno")) {
        let live: Vec<String> =
            file.nodes.iter().filter(|n| crate::cluster::is_running(n.pid)).map(|n| n.rpc.clone()).collect();
        if !live.is_empty() {
            return live;
        }
    }
    vec![idunno_node::config::DEFAULT_ADDR.to_string()]
}

pub async fn connect(node: Option<String>) -> Result<(String, NodeClient<Channel>), CliError> {
    let addr = resolve(node);
    let client = idunno_rpc::connect(&addr, idunno_rpc::DEFAULT_TIMEOUT).await?;
    Ok((addr, client))
}

/// For polling loops that must not wait 5 s on a dead node.
pub async fn connect_quick(addr: &str) -> Result<NodeClient<Channel>, CliError> {
    Ok(idunno_rpc::connect(addr, Duration::from_millis(1000)).await?)
}
