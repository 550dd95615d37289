//! Joining the group through seeds: `--join` entries (`HOST:PORT`, several
//! allowed, a host may be a DNS name that resolves to several addresses),
//! resolved again on every round so a name that appears later still works,
//! announced to every address they give but this node's own, until the node
//! is in the group that has the coordinator.
//!
//! When is a node in *the* group? Seeing some other member is not enough:
//! two nodes started before any seed can find each other and form a group
//! of their own that never merges with the real one. A node has joined when
//! it knows a coordinator leader (it was added to the group), or when every
//! seed address it was given (its own aside) is a live member of its view.
//! Until then it keeps announcing to all of them, with backoff.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use idunno_membership::{MemberInfo, MembershipHandle};
use tokio::time::Instant;

/// At most this many `--join` entries (each is resolved on every round).
pub const MAX_SEEDS: usize = 32;

/// First pause between announce rounds; doubled each round up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(300);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Check a seed list: not too long, every entry well formed.
pub fn check_entries(entries: &[String]) -> Result<(), String> {
    if entries.len() > MAX_SEEDS {
        return Err(format!("join: {} seeds given; at most {MAX_SEEDS}", entries.len()));
    }
    entries.iter().try_for_each(|e| check_entry(e))
}

/// Check a `--join` entry's form without resolving it (a name may only
/// resolve later): `HOST:PORT` with a port from 1 to 65535, IPv6 hosts in
/// brackets.
pub fn check_entry(entry: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("join: {entry:?} is not a HOST:PORT address ({why})"));
    let Some((host, port)) = entry.rsplit_once(':') else { return bad("no port") };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return bad("the port must be 1 to 65535"),
        Ok(_) => {}
    }
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if bracketed.is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_err())
        || (bracketed.is_none() && host.contains(':'))
    {
        return bad("an IPv6 address must be in brackets");
    }
    let host = bracketed.unwrap_or(host);
    if host.is_empty() {
        return bad("no host");
    }
    if !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
        return bad("not a host name or address");
    }
    Ok(())
}

/// Every address of one entry: a literal as is, a name through the
/// system's resolver (`/etc/hosts`, DNS).
async fn resolve(entry: &str) -> Result<Vec<SocketAddr>, String> {
    if let Ok(a) = entry.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(entry)).await {
        Ok(Ok(addrs)) => Ok(addrs.collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("name lookup timed out".into()),
    }
}

/// Whether the node is in the coordinator's group (see the module notes).
pub fn joined(members: &[MemberInfo], seeds: &[SocketAddr], leader_known: bool) -> bool {
    if leader_known {
        return members.iter().any(|m| !m.is_self && m.state.is_up());
    }
    !seeds.is_empty()
        && seeds.iter().all(|s| members.iter().any(|m| !m.is_self && m.state.is_up() && m.identity.addr == *s))
}

/// Why joining stopped without success.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("no member answered within {} ms ({tried}; is a node running there?)", .waited.as_millis())]
    TimedOut { waited: Duration, tried: String },
    #[error("membership task has stopped")]
    Stopped,
}

/// The addresses joining went through.
pub struct Joined {
    pub seeds: Vec<SocketAddr>,
}

/// Announce to the seeds until [`joined`], or until `limit` has passed
/// (`None`: keep trying, as Consul's `retry_join`). `own` are this node's
/// addresses, never announced to. `leader_known` is asked on every wake.
pub async fn join(
    membership: &MembershipHandle,
    entries: &[String],
    own: &[SocketAddr],
    leader_known: impl Fn() -> bool,
    limit: Option<Duration>,
) -> Result<Joined, JoinError> {
    let started = Instant::now();
    let give_up = limit.map(|l| started + l);
    let mut view = membership.watch();
    let mut backoff = FIRST_BACKOFF;
    let mut next_round = started;
    // Each failure is logged once, not once per round.
    let mut logged: HashSet<String> = HashSet::new();
    let mut seeds: Vec<SocketAddr> = Vec::new();
    loop {
        let now = Instant::now();
        if now >= next_round {
            seeds.clear();
            for entry in entries {
                match resolve(entry).await {
                    Ok(addrs) => {
                        for a in addrs {
                            if !own.contains(&a) && !seeds.contains(&a) {
                                seeds.push(a);
                            }
                        }
                    }
                    Err(e) => {
                        if logged.insert(format!("{entry}: {e}")) {
                            tracing::warn!(seed = %entry, error = %e, "cannot resolve seed; will keep trying");
                        }
                    }
                }
            }
        }
        if joined(&view.borrow_and_update().members, &seeds, leader_known()) {
            tracing::info!(seeds = ?seeds, "joined");
            return Ok(Joined { seeds });
        }
        if let Some(g) = give_up
            && now >= g
        {
            let tried = if seeds.is_empty() {
                format!("{} resolved to no address but this node's own", entries.join(", "))
            } else {
                format!("tried {}", seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))
            };
            return Err(JoinError::TimedOut { waited: now - started, tried });
        }
        if now >= next_round {
            let up = view.borrow().members.clone();
            for s in &seeds {
                if !up.iter().any(|m| !m.is_self && m.state.is_up() && m.identity.addr == *s)
                    && logged.insert(format!("silent {s}"))
                {
                    tracing::info!(seed = %s, "seed has not answered yet; will keep trying");
                }
                membership.announce(*s).await.map_err(|_| JoinError::Stopped)?;
            }
            next_round = now + backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        // Wake on a view change, at the next round, at the limit, and
        // every 250 ms to ask about the leader.
        let mut wake = next_round.min(now + Duration::from_millis(250));
        if let Some(g) = give_up {
            wake = wake.min(g);
        }
        tokio::select! {
            r = view.changed() => if r.is_err() { return Err(JoinError::Stopped) },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use idunno_membership::{MemberState, NodeId, NodeIdentity};

    fn member(port: u16, is_self: bool, state: MemberState) -> MemberInfo {
        MemberInfo {
            identity: NodeIdentity { id: NodeId(port as u64), addr: ([10, 0, 0, 1], port).into(), generation: 1 },
            state,
            swim_incarnation: 0,
            is_self,
        }
    }

    #[test]
    fn entries_are_checked_by_form_only() {
        for ok in ["seeds.example:7000", "10.0.0.1:7000", "[::1]:7000", "node-3.idunno.default.svc:8088"] {
            assert!(check_entry(ok).is_ok(), "{ok}");
        }
        for bad in ["seeds.example", "host:0", "host:70000", ":7000", "::1:7000", "a b:7000", "host:x"] {
            let e = check_entry(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let many: Vec<String> = (0..=MAX_SEEDS).map(|i| format!("h{i}:7000")).collect();
        assert!(check_entries(&many[..MAX_SEEDS]).is_ok());
        assert!(check_entries(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_group_without_every_seed_and_without_a_leader_is_not_joined() {
        let seeds: Vec<SocketAddr> = vec![([10, 0, 0, 1], 1).into(), ([10, 0, 0, 1], 3).into()];
        // Node 4 found node 3 (a seed) but not node 1: a group of its own.
        let view = vec![member(4, true, MemberState::Alive), member(3, false, MemberState::Alive)];
        assert!(!joined(&view, &seeds, false));
        // Once a leader added it, it is in.
        assert!(joined(&view, &seeds, true));
        // Or once every seed is alive in its view.
        let mut all = view.clone();
        all.push(member(1, false, MemberState::Alive));
        assert!(joined(&all, &seeds, false));
        // A dead seed does not count.
        all[2].state = MemberState::Dead;
        assert!(!joined(&all, &seeds, false));
        // Nothing but itself is never joined, leader or not.
        let alone = vec![member(4, true, MemberState::Alive)];
        assert!(!joined(&alone, &[], false) && !joined(&alone, &[], true));
    }
}
