//! `idunno status`.

use idunno_rpc::json::StatusJson;
use idunno_rpc::{RpcError, v1};

use crate::error::CliError;
use crate::output::{Output, table};
use crate::target;

pub async fn run(node: Option<String>, out: Output) -> Result<(), CliError> {
    let (addr, mut client) = target::connect(node).await?;
    let reply = client.status(v1::StatusRequest {}).await.map_err(|s| RpcError::from_status(&addr, s))?.into_inner();
    let doc = StatusJson::from(&reply);
    if out.json {
        return out.json(&doc);
    }
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
    let mut t = table(&["FIELD", "VALUE"]);
    t.add_row(vec!["node".to_string(), format!("{} ({})", doc.node, doc.addr)]);
    t.add_row(vec!["http".to_string(), format!("http://{}/", doc.http)]);
    t.add_row(vec!["leader".to_string(), opt(doc.leader)]);
    t.add_row(vec!["term".to_string(), opt(doc.term)]);
    let voters: Vec<String> = doc.voters.iter().map(u64::to_string).collect();
    t.add_row(vec!["voters".to_string(), if voters.is_empty() { "-".into() } else { voters.join(", ") }]);
    let learners: Vec<String> = doc.learners.iter().map(u64::to_string).collect();
    if !learners.is_empty() {
        t.add_row(vec!["learners".to_string(), learners.join(", ")]);
    }
    t.add_row(vec!["applied index".to_string(), opt(doc.applied_index)]);
    t.add_row(vec!["members alive".to_string(), doc.members_alive.to_string()]);
    t.add_row(vec!["jobs running".to_string(), doc.jobs_running.to_string()]);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / f64::from(1 << 20));
    let c = &doc.caches;
    t.add_row(vec![
        "caches".to_string(),
        format!(
            "inputs {}, models {}, training {} (each at most {}); loaded models at most {} per slot",
            mib(c.inputs),
            mib(c.models),
            mib(c.training),
            mib(c.limit),
            mib(c.models_limit)
        ),
    ]);
    t.add_row(vec![
        "version".to_string(),
        format!("{} (protocol {}, data format {})", doc.version, doc.protocol, doc.data_format),
    ]);
    println!("{t}");
    Ok(())
}
