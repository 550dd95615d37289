//! SDFS's in-process API, as the jobs layer calls it on its own node:
//! three real nodes in this process (real sockets on loopback, real
//! disks), files written through one node's `Sdfs` and read through
//! another's, and bad requests refused with the kind of error a caller
//! can act on, changing nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use idunno_node::{Node, NodeConfig, NodeOptions};
use idunno_sdfs::{Sdfs, SdfsError};

async fn start(id: u64, base: u16, dir: &std::path::Path) -> Node {
    let options = NodeOptions {
        cluster: Some("api".into()),
        id: Some(id),
        addr: Some(format!("127.0.0.1:{}", base + id as u16)),
        http: Some(format!("127.0.0.1:{}", base + 100 + id as u16)),
        data_dir: Some(dir.join(format!("node-{id}"))),
        join: (id != 1).then(|| idunno_node::config::Seeds::One(format!("127.0.0.1:{}", base + 1))),
        voters: Some(3),
        replicas: Some(3),
        ..Default::default()
    };
    let config = NodeConfig::resolve(options).expect("config");
    Node::start(config).await.expect("node starts")
}

/// Retry `f` while the cluster forms (no leader yet, too few members).
async fn until_ok<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdfsError>>,
{
    let started = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if started.elapsed() < Duration::from_secs(60) => {
                tracing::debug!(what, error = %e, "not yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_through_one_node_are_read_through_another() {
    let dir = tempfile::tempdir().unwrap();
    let base = idunno_testkit::free_ports(204);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, base, dir.path()).await);
    }
    let (one, two): (Arc<Sdfs>, Arc<Sdfs>) = (nodes[0].sdfs.clone(), nodes[1].sdfs.clone());
    // Three replicas: every node must be a member before a put places
    // the file on all of them.
    let started = Instant::now();
    while one.live_nodes().len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "the nodes never saw each other");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A file of several chunks, put whole through node 1.
    let data: Vec<u8> = (0..(5u32 << 20) / 4).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
    let stored = until_ok("put", || one.put("data/big.bin", &data)).await;
    assert_eq!((stored.size, stored.replicas.len()), (data.len() as u64, 3), "{stored:?}");
    assert_eq!(stored.blake3, blake3::hash(&data).to_hex().to_string());

    // Read through node 2, in pieces and whole.
    let mut d = two.open("data/big.bin", 0).await.unwrap();
    assert_eq!(d.version.version, stored.version);
    let (mut read, mut pieces) = (Vec::new(), 0);
    while let Some(p) = d.next().await.unwrap() {
        read.extend_from_slice(&p);
        pieces += 1;
    }
    assert!(read == data && pieces >= 5, "{} bytes in {pieces} pieces", read.len());
    assert_eq!(two.get("data/big.bin", stored.version).await.unwrap(), (stored.version, data.clone()));

    // A second version, streamed in uneven pieces; stat and list see it.
    let pieces: Vec<Result<Bytes, SdfsError>> = vec![Ok(Bytes::from_static(b"ab")), Ok(Bytes::from_static(b"cde"))];
    let second = one.put_stream("data/big.bin", 5, tokio_stream::iter(pieces)).await.unwrap();
    assert!(second.version > stored.version);
    let versions = two.stat("data/big.bin", false).await.unwrap();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), [second.version, stored.version]);
    assert_eq!(two.get("data/big.bin", 0).await.unwrap().1, b"abcde");
    one.put("data/small", b"x").await.unwrap();
    let (listed, next) = two.list("data/", "", 1, false).await.unwrap();
    assert_eq!((listed[0].name.as_str(), next.as_str()), ("data/big.bin", "data/big.bin"));
    let (listed, next) = two.list("data/", &next, 1, false).await.unwrap();
    assert_eq!((listed[0].name.as_str(), listed[0].size, next.as_str()), ("data/small", 1, ""));

    // Refusals say what kind of thing went wrong, and change nothing.
    let short = vec![Ok(Bytes::from_static(b"abc"))];
    let e = one.put_stream("data/big.bin", 10, tokio_stream::iter(short)).await.unwrap_err();
    assert!(matches!(&e, SdfsError::Invalid(m) if m.contains("announced 10 bytes but 3 arrived")), "{e:?}");
    let failing = vec![Ok(Bytes::from_static(b"abc")), Err(SdfsError::Interrupted("the source failed".into()))];
    let e = one.put_stream("data/big.bin", 6, tokio_stream::iter(failing)).await.unwrap_err();
    assert!(matches!(&e, SdfsError::Interrupted(_)), "{e:?}");
    assert_eq!(two.stat("data/big.bin", false).await.unwrap().len(), 2, "a refused put added a version");
    assert!(matches!(one.put("", b"x").await, Err(SdfsError::Invalid(_))));
    assert!(matches!(two.open("nothing/here", 0).await, Err(SdfsError::NotFound(_))));
    let e = two.get("data/big.bin", 999).await.unwrap_err();
    assert!(matches!(&e, SdfsError::NotFound(m) if m.contains("has no version 999")), "{e:?}");

    // Deleted through node 2, gone for node 1.
    assert_eq!(two.delete("data/small").await.unwrap().len(), 1);
    assert!(matches!(one.stat("data/small", false).await, Err(SdfsError::NotFound(_))));
    assert!(matches!(one.delete("data/small").await, Err(SdfsError::NotFound(_))));

    for n in nodes {
        n.shutdown().await;
    }
}
