//! What this node's part of SDFS did, for `/metrics`: per node (add them
//! up across nodes). What the namespace holds (files, versions, bytes,
//! under-replicated versions) is cluster-wide and read from the state at
//! scrape time by the node.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug)]
pub struct SdfsMetrics {
    pub puts: Counter,
    pub put_bytes: Counter,
    pub put_seconds: Histogram,
    pub gets: Counter,
    pub get_bytes: Counter,
    pub get_seconds: Histogram,
    pub repairs: Counter,
    pub repaired_bytes: Counter,
    pub corrupt_replicas: Counter,
}

impl Default for SdfsMetrics {
    fn default() -> Self {
        // 1 ms to ~65 s.
        let buckets = || Histogram::new(exponential_buckets(0.001, 2.0, 17));
        SdfsMetrics {
            puts: Counter::default(),
            put_bytes: Counter::default(),
            put_seconds: buckets(),
            gets: Counter::default(),
            get_bytes: Counter::default(),
            get_seconds: buckets(),
            repairs: Counter::default(),
            repaired_bytes: Counter::default(),
            corrupt_replicas: Counter::default(),
        }
    }
}

impl SdfsMetrics {
    /// Register under `reg` (which carries the `idunno_` prefix).
    pub fn register(&self, reg: &mut Registry) {
        reg.register("sdfs_puts", "Puts this node coordinated that committed", self.puts.clone());
        reg.register("sdfs_put_bytes", "Bytes of committed puts this node coordinated", self.put_bytes.clone());
        reg.register(
            "sdfs_put_duration_seconds",
            "Time from a put's start to its commit, on the node that coordinated it",
            self.put_seconds.clone(),
        );
        reg.register("sdfs_gets", "Whole versions this node read for a client or a layer", self.gets.clone());
        reg.register("sdfs_get_bytes", "Bytes of the versions this node read", self.get_bytes.clone());
        reg.register(
            "sdfs_get_duration_seconds",
            "Time to read a whole version, on the node that read it",
            self.get_seconds.clone(),
        );
        reg.register("sdfs_repairs", "Replicas this node (as leader) re-created", self.repairs.clone());
        reg.register("sdfs_repaired_bytes", "Bytes copied to re-create replicas", self.repaired_bytes.clone());
        reg.register(
            "sdfs_corrupt_replicas",
            "Replicas found unreadable or corrupt on read and dropped",
            self.corrupt_replicas.clone(),
        );
    }
}
