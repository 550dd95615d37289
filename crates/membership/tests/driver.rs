//! The UDP driver with real sockets on loopback, in one process: members
//! join, the event stream reports a silenced member as dead and a leaving
//! one as left.

use std::time::Duration;

use idunno_membership::{
    DriverOptions, MemberState, MembershipEvent, MembershipHandle, NodeId, NodeIdentity, Swim, SwimConfig,
};
use idunno_net::UdpSocket;
use tokio_util::sync::CancellationToken;

async fn start(id: u64) -> (MembershipHandle, CancellationToken, NodeIdentity) {
    let socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).await.expect("bind");
    let identity = NodeIdentity { id: NodeId(id), addr: socket.local_addr().unwrap(), generation: 1 };
    let swim = Swim::new(identity.clone(), &SwimConfig::default(), id).expect("swim");
    let token = CancellationToken::new();
    let (handle, _task) = idunno_membership::spawn(socket, swim, DriverOptions::default(), token.clone());
    (handle, token, identity)
}

async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<MembershipEvent>,
    want: impl Fn(&MembershipEvent) -> bool,
) -> MembershipEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ev = rx.recv().await.expect("event stream open");
            if want(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_up_dead_and_left() {
    let (a, _ta, ia) = start(1).await;
    let mut events = a.subscribe();
    let (b, tb, ib) = start(2).await;
    let (c, _tc, ic) = start(3).await;
    assert!(b.join(ia.addr, Duration::from_secs(5)).await.unwrap());
    assert!(c.join(ia.addr, Duration::from_secs(5)).await.unwrap());

    let mut ups = Vec::new();
    while ups.len() < 2 {
        if let MembershipEvent::Up(x) = next_event(&mut events, |e| matches!(e, MembershipEvent::Up(_))).await {
            ups.push(x);
        }
    }
    ups.sort_by_key(|i| i.id);
    assert_eq!(ups, vec![ib.clone(), ic.clone()]);

    // Silencing b's driver is a crash as far as the others can tell.
    tb.cancel();
    next_event(&mut events, |e| matches!(e, MembershipEvent::Dead(x) if *x == ib)).await;
    let view = a.view();
    let row = view.members.iter().find(|m| m.identity == ib).expect("b listed");
    assert_eq!(row.state, MemberState::Dead);

    c.leave().await.unwrap();
    next_event(&mut events, |e| matches!(e, MembershipEvent::Left(x) if *x == ic)).await;
    let view = a.view();
    assert_eq!(view.members.iter().find(|m| m.identity == ic).unwrap().state, MemberState::Left);
    assert_eq!(view.stats.dead_events, 1, "the leave was not counted as a death");
}

/// A node told to join through its own address (a seed list or a DNS name
/// that includes it) must not count itself as the member it joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_through_ones_own_address_joins_nothing() {
    let (a, _ta, ia) = start(1).await;
    assert!(!a.join(ia.addr, Duration::from_millis(1500)).await.unwrap(), "joined itself: {:?}", a.view().members);
    assert!(a.view().members.iter().all(|m| m.is_self), "{:?}", a.view().members);
}
