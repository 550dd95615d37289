//! `idunno events [--follow]`: the cluster's timeline, oldest first.

use std::time::Duration;

use clap::Args;
use idunno_rpc::{RpcError, v1};
use serde::{Deserialize, Serialize};

use crate::error::CliError;
use crate::output::{Output, table};
use crate::target;

#[derive(Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen (with --json: one JSON object per line).
    #[arg(long)]
    follow: bool,
    /// Only events numbered after this one.
    #[arg(long, default_value_t = 0)]
    after: u64,
}

/// An event as the command prints it (the contract: `at_ms`, `kind`,
/// `node`, `detail`; and `seq`, `job`, `by`).
#[derive(Debug, Deserialize, Serialize)]
struct Event {
    seq: u64,
    at_ms: u64,
    kind: String,
    node: u64,
    #[serde(default)]
    job: Option<String>,
    detail: String,
    by: u64,
}

/// How often `--follow` asks for more.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

pub async fn run(args: EventsArgs, node: Option<String>, out: Output) -> Result<(), CliError> {
    let (addr, mut client) = target::connect(node).await?;
    let mut after = args.after;
    let mut all = Vec::new();
    loop {
        let page = fetch(&addr, &mut client, after).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        if args.follow {
            print(&page, out)?;
        } else {
            all.extend(page);
        }
    }
    if !args.follow {
        if out.json {
            return out.json(&all);
        }
        if all.is_empty() {
            println!("no events");
            return Ok(());
        }
        return print(&all, out);
    }
    loop {
        tokio::time::sleep(FOLLOW_EVERY).await;
        let page = fetch(&addr, &mut client, after).await?;
        if let Some(last) = page.last() {
            after = last.seq;
            print(&page, out)?;
        }
    }
}

/// Every event, as a table (or JSON): `idunno events` without `--follow`.
pub async fn print_all(node: Option<String>, out: Output) -> Result<(), CliError> {
    run(EventsArgs { follow: false, after: 0 }, node, out).await
}

async fn fetch(
    addr: &str,
    client: &mut idunno_rpc::NodeClient<tonic::transport::Channel>,
    after: u64,
) -> Result<Vec<Event>, CliError> {
    let req = v1::EventsRequest { after, limit: 0 };
    let reply = client.events(req).await.map_err(|s| RpcError::from_status(addr, s))?.into_inner();
    serde_json::from_slice(&reply.json)
        .map_err(|e| CliError::failed(format!("{addr} sent events that do not parse: {e}")))
}

fn print(events: &[Event], out: Output) -> Result<(), CliError> {
    if out.json {
        // Following: one object per line, as they come.
        for e in events {
            let line = serde_json::to_string(e).map_err(|e| CliError::failed(format!("json: {e}")))?;
            println!("{line}");
        }
        return Ok(());
    }
    let mut t = table(&["#", "TIME (UTC)", "KIND", "NODE", "DETAIL"]);
    for e in events {
        let node = if e.node == 0 { "-".to_string() } else { e.node.to_string() };
        t.add_row(vec![e.seq.to_string(), utc(e.at_ms), e.kind.clone(), node, e.detail.clone()]);
    }
    println!("{t}");
    Ok(())
}

/// `2026-12-02 07:10:11.123` from milliseconds since the Unix epoch.
fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days to a civil date (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rest / 3600, rest / 60 % 60, rest % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{:03}", ms % 1000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(super::utc(1_798_873_811_123), "2027-01-02 07:10:11.123");
        assert_eq!(super::utc(951_782_400_000), "2000-02-29 00:00:00.000");
    }
}
