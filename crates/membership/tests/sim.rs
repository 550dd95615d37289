//! Several membership cores in one process on a simulated network and a
//! simulated clock: deterministic, no sockets, no sleeping. Each test is a
//! scenario with its expected outcome; a failure prints the seed.

use std::time::Duration;

use idunno_membership::{MemberState, MembershipEvent, NodeId, NodeIdentity, Swim, SwimConfig};

mod harness;
use harness::{Sim, addr};

#[test]
fn five_members_converge() {
    for seed in 1..=5 {
        let mut sim = Sim::new(5, seed, 0.0);
        let took = sim.form_group();
        assert!(took <= 3_000, "seed {seed}: convergence took {took} ms");
        // Nobody declared anybody dead while forming.
        assert!(sim.events.iter().all(|(_, _, e)| matches!(e, MembershipEvent::Up(_))), "seed {seed}");
    }
}

#[test]
fn two_simultaneous_crashes_are_detected_by_every_survivor() {
    let mut worst = 0;
    for seed in 1..=10 {
        let mut sim = Sim::new(5, seed, 0.0);
        sim.form_group();
        sim.run_until(sim.now + 2_000);
        sim.crash(3);
        sim.crash(4);
        let took = sim
            .run_until_true(10_000, |s| s.all_alive_see(&[3, 4], MemberState::Dead))
            .unwrap_or_else(|| panic!("seed {seed}: crash not detected within 10 s"));
        worst = worst.max(took);
        let dead: Vec<_> = sim.events.iter().filter(|(_, _, e)| matches!(e, MembershipEvent::Dead(_))).collect();
        // 3 survivors each report 2 deaths, once.
        assert_eq!(dead.len(), 6, "seed {seed}: {dead:?}");
    }
    println!("worst simulated detection time of two crashes: {worst} ms");
    assert!(worst <= 4_000, "worst detection {worst} ms is over the 4 s target");
}

#[test]
fn graceful_leave_shows_left_not_dead() {
    for seed in 1..=5 {
        let mut sim = Sim::new(5, seed, 0.0);
        sim.form_group();
        sim.with_node(4, |n| n.leave());
        sim.crash(4); // the process exits right after leaving
        sim.run_until_true(5_000, |s| s.all_alive_see(&[4], MemberState::Left)).unwrap_or_else(|| {
            let seen: Vec<_> = (0..4).map(|o| sim.state_seen_by(o, 4)).collect();
            panic!("seed {seed}: leave not seen as left: {seen:?} events {:?}", sim.events)
        });
        assert!(
            !sim.events.iter().any(|(_, _, e)| matches!(e, MembershipEvent::Dead(_))),
            "seed {seed}: a leave was reported as a death"
        );
        let lefts = sim.events.iter().filter(|(_, _, e)| matches!(e, MembershipEvent::Left(_))).count();
        assert_eq!(lefts, 4, "seed {seed}: every survivor reports the leave once");
    }
}

#[test]
fn restarted_member_rejoins_with_higher_generation() {
    let mut sim = Sim::new(5, 7, 0.0);
    sim.form_group();
    sim.crash(2);
    sim.run_until_true(10_000, |s| s.all_alive_see(&[2], MemberState::Dead)).expect("detected");
    sim.start(2, 2);
    let to = sim.addrs[0];
    sim.with_node(2, |n| n.announce(to));
    sim.run_until_true(5_000, |s| {
        (0..5).all(|o| s.state_seen_by(o, 2) == Some(MemberState::Alive) && s.generation_seen_by(o, 2) == Some(2))
    })
    .expect("restarted node seen alive under generation 2 by all");
}

#[test]
fn restart_before_detection_replaces_the_old_life() {
    // Killed and back before anyone noticed: the new generation wins.
    let mut sim = Sim::new(4, 3, 0.0);
    sim.form_group();
    sim.crash(1);
    sim.start(1, 5);
    let to = sim.addrs[0];
    sim.with_node(1, |n| n.announce(to));
    sim.run_until_true(5_000, |s| (0..4).all(|o| s.generation_seen_by(o, 1) == Some(5)))
        .expect("new generation adopted");
}

#[test]
fn no_false_positive_at_five_percent_loss() {
    for seed in 1..=3 {
        let mut sim = Sim::new(5, seed, 0.05);
        sim.form_group();
        sim.events.clear();
        sim.run_until(sim.now + 300_000); // five simulated minutes
        let delivered: u64 = (0..5).map(|i| sim.nodes[i].as_ref().unwrap().stats().datagrams_in).sum();
        println!("seed {seed}: {delivered} datagrams delivered in 5 simulated minutes");
        assert!(delivered > 10_000, "the simulation did not run");
        let deaths: Vec<_> = sim.events.iter().filter(|(_, _, e)| matches!(e, MembershipEvent::Dead(_))).collect();
        assert!(deaths.is_empty(), "seed {seed}: false positives at 5% loss: {deaths:?}");
        // A member that refuted a suspicion in time must not be told it is
        // dead (it would throw away its identity and rejoin for nothing).
        let renewals: u64 = (0..5).map(|i| sim.nodes[i].as_ref().unwrap().stats().self_renewals).sum();
        assert_eq!(renewals, 0, "seed {seed}: members renewed their identity after refuting");
        assert!(sim.all_alive_see(&[], MemberState::Alive));
        for o in 0..5 {
            for s in 0..5 {
                assert_eq!(sim.state_seen_by(o, s), Some(MemberState::Alive), "seed {seed}: {o} sees {s}");
            }
        }
    }
}

#[test]
fn garbage_datagrams_change_nothing() {
    let mut sim = Sim::new(3, 11, 0.0);
    sim.form_group();
    let before: Vec<_> = (0..3).map(|i| sim.nodes[i].as_ref().unwrap().members()).collect();
    for junk in [&b""[..], b"\x00", b"hello, world", &[0xff; 1500][..], &[1u8; 64][..]] {
        let node = sim.nodes[0].as_mut().unwrap();
        // Junk is either refused outright or, when it happens to decode as
        // a header addressed to someone else, ignored.
        let _ = node.handle_datagram(junk);
        assert!(node.drain_effects().is_empty(), "junk {junk:?} produced effects");
    }
    let after: Vec<_> = (0..3).map(|i| sim.nodes[i].as_ref().unwrap().members()).collect();
    assert_eq!(before, after);
    assert!(sim.nodes[0].as_ref().unwrap().stats().datagrams_rejected >= 4);
}

#[test]
fn timing_that_cannot_work_is_refused() {
    let bad = SwimConfig { probe_rtt_ms: 500, probe_period_ms: 300, ..SwimConfig::default() };
    let id = NodeIdentity { id: NodeId(1), addr: addr(0), generation: 1 };
    let err = Swim::new(id, &bad, 1).err().expect("refused");
    assert!(err.to_string().contains("probe_rtt_ms"), "{err}");
    let _ = Duration::ZERO;
}
