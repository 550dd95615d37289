//! Generations from the wire are bounded whatever the secret: the issue's
//! forged announce (a member's address with generation u64::MAX) is
//! refused whole by the core, before foca believes any of it.

use std::net::SocketAddr;

use idunno_membership::{Effect, MemberState, NodeId, NodeIdentity, Swim, SwimConfig};

const NOW: u64 = 1_800_000_000_000;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn swim(id: u64, port: u16, generation: u64) -> Swim {
    let mut s =
        Swim::new(NodeIdentity { id: NodeId(id), addr: addr(port), generation }, &SwimConfig::default(), id).unwrap();
    s.set_now_ms(NOW);
    s
}

/// Deliver every datagram `from` wants to send to `to` (one hop).
fn deliver(from: &mut Swim, to: &mut Swim) -> Vec<Result<(), String>> {
    let mut results = Vec::new();
    for e in from.drain_effects() {
        if let Effect::Send { to: a, data } = e
            && a == to.identity().addr
        {
            results.push(to.handle_datagram(&data).map_err(|e| e.to_string()));
        }
    }
    results
}

/// Node a announces to node b until b knows a.
fn pair() -> (Swim, Swim) {
    let mut a = swim(1, 7001, NOW - 5_000);
    let mut b = swim(2, 7002, NOW - 4_000);
    a.announce(addr(7002));
    deliver(&mut a, &mut b);
    deliver(&mut b, &mut a);
    assert!(b.members().iter().any(|m| m.identity.id == NodeId(1) && m.state == MemberState::Alive));
    (a, b)
}

fn forged_announce(generation: u64, to: &mut Swim) -> Vec<Result<(), String>> {
    let mut forger = swim(1, 7001, generation);
    forger.announce(addr(7002));
    deliver(&mut forger, to)
}

#[test]
fn a_generation_from_the_far_future_is_refused_and_changes_nothing() {
    for generation in [u64::MAX, u64::MAX >> 1, NOW + 2 * 24 * 3600 * 1000] {
        let (_a, mut b) = pair();
        let members = b.members();
        let rejected = b.stats().datagrams_rejected;
        let results = forged_announce(generation, &mut b);
        assert_eq!(results.len(), 1);
        let err = results[0].clone().expect_err("refused");
        assert!(err.contains("generation beyond"), "{err}");
        assert_eq!(b.members(), members, "generation {generation}: the view changed");
        assert_eq!(b.stats().datagrams_rejected, rejected + 1);
        assert!(b.drain_effects().iter().all(|e| !matches!(e, Effect::Event(_))), "no membership event");
    }
}

#[test]
fn a_restart_within_the_clock_bound_is_believed() {
    // The same node restarted a minute later: a newer generation, within
    // the bound, replaces the old one.
    let (_a, mut b) = pair();
    let results = forged_announce(NOW + 60_000, &mut b);
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    assert!(b.members().iter().any(|m| m.identity.generation == NOW + 60_000));
}
