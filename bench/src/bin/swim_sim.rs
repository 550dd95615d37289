//! bench/swim-sim: SWIM (idunno's membership core, foca inside) with
//! 1,000 members on the deterministic simulated network and clock of the
//! membership tests (every member a real `Swim`; datagrams delivered after
//! 1 ms; no sockets). Simulated time, so the figures are the protocol's,
//! not this machine's.
//!
//! 1. The group forms: every member announces to member 0; simulated time
//!    until every member sees all 1,000 alive.
//! 2. Detection, one crash at a time (`--crashes`): simulated time from the
//!    crash until the first member suspects the victim (SWIM's detection;
//!    the paper's expected first-detection time is e/(e−1) ≈ 1.58 protocol
//!    periods), and until every survivor has it dead (dissemination), in
//!    protocol periods.
//! 3. False positives: `--loss` of every datagram dropped for
//!    `--fp-seconds` simulated seconds; members declared dead while alive.
//!
//! `cargo run --release -p idunno-bench --bin swim_sim -- --members 1000`

#[path = "../../../crates/membership/tests/harness/mod.rs"]
mod harness;

use std::time::Instant;

use clap::Parser;
use harness::Sim;
use idunno_membership::{MemberState, MembershipEvent, SwimConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    members: usize,
    #[arg(long, default_value_t = 10)]
    crashes: usize,
    #[arg(long, default_value_t = 0.05)]
    loss: f64,
    #[arg(long, default_value_t = 60)]
    fp_seconds: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Override the default SWIM configuration's transmissions of each
    /// update (`max_transmissions`).
    #[arg(long)]
    max_transmissions: Option<u8>,
    /// Override the default suspicion timeout (`suspect_to_down_ms`).
    #[arg(long)]
    suspect_ms: Option<u64>,
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    if xs.is_empty() { f64::NAN } else { xs[xs.len() / 2] }
}

fn main() {
    let args = Args::parse();
    let mut config = SwimConfig::default();
    config.max_transmissions = args.max_transmissions.unwrap_or(config.max_transmissions);
    config.suspect_to_down_ms = args.suspect_ms.unwrap_or(config.suspect_to_down_ms);
    let period = config.probe_period_ms as f64;
    let n = args.members;
    let wall = Instant::now();
    let mut sim = Sim::with_config(n, args.seed, 0.0, config.clone());
    println!(
        "bench/swim-sim: {n} members, probe period {} ms, probe timeout {} ms, {} indirect probes, suspicion {} ms and {} transmissions per update for up to 7 members (scaled with the group's size), seed {}",
        config.probe_period_ms,
        config.probe_rtt_ms,
        config.indirect_probes,
        config.suspect_to_down_ms,
        config.max_transmissions,
        args.seed
    );
    for i in 1..n {
        let to = sim.addrs[0];
        sim.with_node(i, |s| s.announce(to));
    }
    // Checked every 500 ms of simulated time (a check reads every
    // member's whole list).
    let formed = loop {
        if sim.observers_seeing_all_alive() == n {
            break Some(sim.now);
        }
        if sim.now > 300_000 {
            break None;
        }
        let next = sim.now + 500;
        sim.run_until(next);
    };
    match formed {
        Some(ms) => println!(
            "formed: every member sees all {n} alive after {:.1} s simulated (checked every 0.5 s; {:.0} s of wall time)",
            ms as f64 / 1000.0,
            wall.elapsed().as_secs_f64()
        ),
        None => {
            println!("formed: NOT within 300 s simulated ({} of {n} see everyone)", sim.observers_seeing_all_alive());
            return;
        }
    }
    let (mut first, mut all) = (Vec::new(), Vec::new());
    let mut crashed = Vec::new();
    for k in 0..args.crashes {
        sim.run_until(sim.now + 5_000);
        let victim = 1 + (k * 97 + 13) % (n - 1);
        crashed.push(victim);
        let start = sim.now;
        sim.crash(victim);
        let (mut t_first, mut t_all) = (None, None);
        while sim.now - start <= 60_000 {
            let seen: Vec<Option<MemberState>> =
                (0..n).filter(|o| sim.nodes[*o].is_some()).map(|o| sim.state_seen_by(o, victim)).collect();
            if t_first.is_none() && seen.iter().any(|st| *st != Some(MemberState::Alive)) {
                t_first = Some(sim.now - start);
            }
            if seen.iter().all(|st| *st == Some(MemberState::Dead)) {
                t_all = Some(sim.now - start);
                break;
            }
            let next = sim.now + 10;
            sim.run_until(next);
        }
        match (t_first, t_all) {
            (Some(f), Some(a)) => {
                first.push(f as f64 / period);
                all.push(a as f64 / period);
            }
            _ => println!("  crash {k} (member {victim}): not detected by everyone within 60 s"),
        }
    }
    let (mf, ma) = (median(&mut first.clone()), median(&mut all.clone()));
    let worst = all.iter().cloned().fold(0.0, f64::max);
    println!(
        "detection of {} crashes, one at a time: first suspicion median {mf:.2} periods (SWIM expects ≈ 1.58 for the probe to be sent, plus the probe timeout); everyone has it dead: median {ma:.2} periods ({:.2} s), worst {worst:.2} periods",
        first.len(),
        ma * period / 1000.0
    );
    sim.events.clear();
    sim.loss = args.loss;
    sim.run_until(sim.now + args.fp_seconds * 1000);
    let deaths = sim
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, MembershipEvent::Dead(id) if !crashed.iter().any(|c| sim.addrs[*c] == id.addr)))
        .count();
    let delivered: u64 = sim.nodes.iter().flatten().map(|s| s.stats().datagrams_in).sum();
    println!(
        "false positives at {:.0}% loss over {} s simulated: {deaths} deaths of live members ({delivered} datagrams delivered in all)",
        args.loss * 100.0,
        args.fp_seconds
    );
    println!("(took {:.0} s of wall time)", wall.elapsed().as_secs_f64());
}
