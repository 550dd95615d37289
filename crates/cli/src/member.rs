//! `idunno member list|join|leave`.

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
