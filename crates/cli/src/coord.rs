//! `idunno coord apply|state`: the coordinator's replicated state, low
//! level. Later commands (`fs`, `job`) are built on the same calls; these
//! two are for operators and tests.

use std::future::Future;
use std::time::Duration;

use clap::Subcommand;
use idunno_rpc::{CoordinatorClient, Limited, RpcError, v1};
use tonic::transport::Channel;

use crate::error::CliError;
use crate::output::{Output, table};
use crate::target;

#[derive(Subcommand)]
pub enum CoordCommand {
    /// Apply one state-machine command given as JSON, e.g.
    /// '{"op":"add_job","spec":{"name":"j","model":"m","inputs":"i","labels":null,"batch_size":8}}'
    Apply { command: String },
    /// The replicated state as the leader has it now.
    State {
        /// This node's own applied copy instead (may lag the leader).
        #[arg(long)]
        local: bool,
    },
}

/// Long enough to wait out an election (the node itself retries for 8 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Run `call` against the chosen node; if it cannot be reached and the
/// node came from `cluster.json`, try the other live nodes in turn.
async fn on_any_node<T, F, Fut>(node: Option<String>, call: F) -> Result<T, CliError>
where
    F: Fn(String, CoordinatorClient<Channel>) -> Fut,
    Fut: Future<Output = Result<T, RpcError>>,
{
    let mut last = None;
    for addr in target::candidates(node) {
        let channel = match idunno_rpc::connect_channel_with(&addr, Duration::from_secs(2), CALL_TIMEOUT).await {
            Ok(c) => c,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        match call(addr.clone(), CoordinatorClient::new(channel).limited()).await {
            Err(e @ RpcError::Unreachable { .. }) => last = Some(e),
            other => return other.map_err(CliError::from),
        }
    }
    Err(last.map(CliError::from).unwrap_or_else(|| CliError::failed("no node to talk to")))
}

pub async fn run(cmd: CoordCommand, node: Option<String>, out: Output) -> Result<(), CliError> {
    match cmd {
        CoordCommand::Apply { command } => {
            // The node decodes and checks the command (it answers
            // INVALID_ARGUMENT naming what is wrong).
            let parsed: serde_json::Value = serde_json::from_str(&command)
                .map_err(|e| CliError::bad_input(format!("not a coordinator command: {e}")))?;
            let json = serde_json::to_vec(&parsed).map_err(|e| CliError::failed(e.to_string()))?;
            let reply = on_any_node(node, |addr, mut c| {
                let json = json.clone();
                async move {
                    let mut req = tonic::Request::new(v1::ApplyRequest { command_json: json, forwarded: false });
                    req.set_timeout(CALL_TIMEOUT);
                    c.apply(req).await.map(|r| r.into_inner()).map_err(|s| RpcError::from_status(&addr, s))
                }
            })
            .await?;
            let applied: serde_json::Value = serde_json::from_slice(&reply.applied_json)
                .map_err(|e| CliError::failed(format!("unreadable reply: {e}")))?;
            match (applied.get("Ok"), applied.get("Err")) {
                (Some(r), _) => {
                    if out.json {
                        return out.json(&serde_json::json!({
                            "reply": r, "log_index": reply.log_index, "leader": reply.leader
                        }));
                    }
                    println!("applied at log index {} by leader {}: {r}", reply.log_index, reply.leader);
                    Ok(())
                }
                // A refusal changed nothing: the caller's input was wrong.
                (None, Some(_)) => Err(CliError::bad_input(format!("refused: {}", reply.refusal))),
                (None, None) => Err(CliError::failed(format!("unreadable reply: {applied}"))),
            }
        }
        CoordCommand::State { local } => {
            let reply = on_any_node(node, |addr, mut c| async move {
                let mut req = tonic::Request::new(v1::ReadStateRequest { forwarded: false, local });
                req.set_timeout(CALL_TIMEOUT);
                c.read_state(req).await.map(|r| r.into_inner()).map_err(|s| RpcError::from_status(&addr, s))
            })
            .await?;
            let data: serde_json::Value = serde_json::from_slice(&reply.state_json)
                .map_err(|e| CliError::failed(format!("unreadable state: {e}")))?;
            let state = &data["state"];
            if out.json {
                return out.json(&serde_json::json!({
                    "leader": reply.leader,
                    "applied_index": reply.applied_index,
                    "state": state,
                }));
            }
            let count = |domain: &str, table: &str| state[domain][table].as_object().map_or(0, |m| m.len()).to_string();
            let mut t = table(&["WHAT", "COUNT"]);
            let tables = [
                ("files", "namespace", "files"),
                ("jobs", "inference", "jobs"),
                ("trainings", "training", "jobs"),
                ("assignments", "inference", "assignments"),
            ];
            for (what, domain, name) in tables {
                t.add_row(vec![what.to_string(), count(domain, name)]);
            }
            println!("{t}");
            println!("as of log index {} at leader {}", reply.applied_index, reply.leader);
            Ok(())
        }
    }
}
