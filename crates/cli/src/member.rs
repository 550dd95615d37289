//! `idunno member list|join|leave|drain`.

use clap::Subcommand;
use idunno_rpc::json::MemberJson;
use idunno_rpc::{RpcError, v1};

use crate::error::CliError;
use crate::output::{Output, table};
use crate::target;

#[derive(Subcommand)]
pub enum MemberCommand {
    /// Every member as the answering node sees it.
    List,
    /// Make the node join the group of another member.
    Join {
        /// Any member of the group to join (HOST:PORT).
        #[arg(long)]
        introducer: String,
    },
    /// Make the node leave the group gracefully (it then stops).
    Leave,
    /// Empty a node and stop it: it takes no more work, hands back what it holds, leaves the
    /// voters, waits until its files are held elsewhere, then leaves the group. Returns once it
    /// has and the coordinator group has another leader.
    Drain {
        /// The node to drain (its id, as `member list` shows) [default: the node this command
        /// talks to, as in a Kubernetes preStop hook].
        node_id: Option<u64>,
        /// Give up waiting after this many seconds (the drain goes on).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

pub async fn run(cmd: MemberCommand, node: Option<String>, out: Output) -> Result<(), CliError> {
    let (addr, mut client) = target::connect(node).await?;
    let err = |s| RpcError::from_status(&addr, s);
    match cmd {
        MemberCommand::List => {
            let reply = client.members(v1::MembersRequest {}).await.map_err(err)?.into_inner();
            let rows: Vec<MemberJson> = reply.members.iter().map(MemberJson::from).collect();
            if out.json {
                return out.json(&rows);
            }
            let mut t = table(&["ID", "ADDRESS", "STATE", "INCARNATION", "ROLE"]);
            for r in &rows {
                let id = if r.is_self { format!("{} *", r.id) } else { r.id.to_string() };
                t.add_row(vec![id, r.addr.clone(), r.state.to_string(), r.incarnation.to_string(), r.role.to_string()]);
            }
            println!("{t}");
            let alive = rows.iter().filter(|r| r.state == "alive" || r.state == "suspect").count();
            println!("{alive} of {} members alive, as seen by {addr} (*)", rows.len());
        }
        MemberCommand::Join { introducer } => {
            let reply =
                client.join(v1::JoinRequest { introducer: introducer.clone() }).await.map_err(err)?.into_inner();
            if out.json {
                return out.json(&serde_json::json!({ "joined": introducer, "members_alive": reply.members_alive }));
            }
            println!("{addr} joined the group of {introducer}: {} members alive", reply.members_alive);
        }
        MemberCommand::Drain { node_id, timeout } => {
            let started = std::time::Instant::now();
            let node_id = match node_id {
                Some(id) => id,
                None => client.status(v1::StatusRequest {}).await.map_err(err)?.into_inner().node,
            };
            let reply = client.drain(v1::DrainRequest { node: node_id }).await.map_err(err)?.into_inner();
            if !out.json {
                println!("node {node_id} is draining");
            }
            // Follow it through a node that stays.
            let members = client.members(v1::MembersRequest {}).await.map_err(err)?.into_inner().members;
            let via = members
                .iter()
                .find(|m| m.id != node_id && m.state() == v1::MemberState::Alive)
                .map(|m| m.addr.clone())
                .unwrap_or_else(|| addr.clone());
            let (via, mut watcher) = target::connect(Some(via)).await?;
            let deadline = started + std::time::Duration::from_secs(timeout);
            loop {
                let members = watcher
                    .members(v1::MembersRequest {})
                    .await
                    .map_err(|s| RpcError::from_status(&via, s))?
                    .into_inner()
                    .members;
                let state = members
                    .iter()
                    .filter(|m| m.id == node_id && m.incarnation >= reply.generation)
                    .map(|m| m.state())
                    .next();
                if matches!(state, Some(v1::MemberState::Left | v1::MemberState::Dead) | None) {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(CliError::failed(format!(
                        "node {node_id} is still draining after {timeout} s (its log says what it waits for); \
                         the drain goes on"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            // A drained leader has stepped down; the others elect a new one
            // only after their election timeout. The drain is over when the
            // group has a coordinator again, so the next step of a rolling
            // restart never starts without one.
            loop {
                let status = watcher
                    .status(v1::StatusRequest {})
                    .await
                    .map_err(|s| RpcError::from_status(&via, s))?
                    .into_inner();
                if status.leader.is_some_and(|l| l != node_id) {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    return Err(CliError::failed(format!(
                        "node {node_id} stopped, but no other coordinator leader was known after {timeout} s"
                    )));
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            if out.json {
                return out.json(&serde_json::json!({ "drained": node_id, "seconds": seconds }));
            }
            println!("node {node_id} drained and stopped in {seconds:.1} s");
        }
        MemberCommand::Leave => {
            client.leave(v1::LeaveRequest {}).await.map_err(err)?;
            if out.json {
                return out.json(&serde_json::json!({ "left": addr }));
            }
            println!("{addr} left the group and is stopping");
        }
    }
    Ok(())
}
