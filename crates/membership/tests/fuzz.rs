//! Property fuzzing of the SWIM datagram decoder: real datagrams of a
//! small group (announces, probes, acks, gossip, leave notices), mutated
//! byte by byte, cut short or replaced by random bytes, are fed to a
//! member. No datagram may panic it, allocate more than a stated bound,
//! or leave it unable to serve: after the garbage, the group still forms.
//!
//! The long run is `PROPTEST_CASES=1000000 cargo test --release -p
//! idunno-membership --test fuzz` (figures in docs/limits.md).

use std::net::SocketAddr;
use std::sync::OnceLock;

use bytes::Bytes;
use idunno_membership::{Effect, NodeId, NodeIdentity, Swim, SwimConfig};
use idunno_testkit::alloc::{Counting, peak_during};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: Counting = Counting;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i))
}

fn member(i: u16) -> Swim {
    let id = NodeIdentity { id: NodeId(u64::from(i)), addr: addr(i), generation: 1 };
    Swim::new(id, &SwimConfig::default(), u64::from(i)).expect("default config")
}

/// Datagrams a three-member group really sends while it forms, gossips
/// and sees one member leave: the seeds the mutations start from.
fn real_datagrams() -> &'static [Bytes] {
    static SEEDS: OnceLock<Vec<Bytes>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut nodes = [member(1), member(2), member(3)];
        nodes[1].announce(addr(1));
        nodes[2].announce(addr(1));
        let mut seen = Vec::new();
        let mut timers = Vec::new();
        for round in 0..40 {
            if round == 30 {
                nodes[2].leave();
            }
            let mut sends = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                for e in n.drain_effects() {
                    match e {
                        Effect::Send { to, data } => sends.push((to, data)),
                        Effect::Schedule { timer, .. } => timers.push((i, timer)),
                        Effect::Event(_) => {}
                    }
                }
            }
            for (to, data) in sends {
                seen.push(data.clone());
                if let Some(n) = nodes.iter_mut().find(|n| n.identity().addr == to) {
                    let _ = n.handle_datagram(&data);
                }
            }
            for (i, t) in std::mem::take(&mut timers) {
                nodes[i].handle_timer(t);
            }
        }
        assert!(seen.len() > 20, "the group exchanged {} datagrams", seen.len());
        seen
    })
}

fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => (any::<prop::sample::Index>(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6), 0..8usize)
            .prop_map(|(which, flips, cut)| {
                let seeds = real_datagrams();
                let mut d = seeds[which.index(seeds.len())].to_vec();
                for (at, b) in flips {
                    if !d.is_empty() {
                        let i = at.index(d.len());
                        d[i] = b;
                    }
                }
                let keep = d.len().saturating_sub(cut);
                d.truncate(keep);
                d
            }),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}

/// A datagram is at most 2 KiB (the driver's buffer): decoding one may
/// take a little more than that, never what a length inside it claims.
const BOUND: usize = 256 << 10;

proptest! {
    #[test]
    fn swim_datagrams(batch in prop::collection::vec(datagram(), 1..8)) {
        let mut m = member(9);
        for d in &batch {
            let (_, peak) = peak_during(|| m.handle_datagram(d));
            prop_assert!(peak <= BOUND, "{peak} bytes allocated for a {}-byte datagram", d.len());
            let _ = m.drain_effects();
        }
        // Still a working member: it answers an announce from a real one.
        let mut newcomer = member(10);
        newcomer.announce(addr(9));
        for e in newcomer.drain_effects() {
            if let Effect::Send { data, .. } = e {
                prop_assert!(m.handle_datagram(&data).is_ok());
            }
        }
        let answered = m.drain_effects().iter().any(|e| matches!(e, Effect::Send { to, .. } if *to == addr(10)));
        prop_assert!(answered, "the member no longer answers an announce");
    }
}
