//! Durable Raft storage for the coordinator group.
//!
//! - [`LogStore`]: the log, the vote and the committed index in one redb
//!   file (`DATA/raft/log.redb`); every write of the log and the vote is an
//!   fsync'd transaction. The newest entries are also kept decoded in
//!   memory ([`Tail`], bounded in entries and bytes): replication to the
//!   followers and applying read what was just appended, and would
//!   otherwise decode it again from disk for every follower.
//! - [`StateMachineStore`]: the [`ClusterState`] in memory, snapshots as a
//!   plain file (`DATA/raft/snapshot.bin`, written atomically). On
//!   restart the snapshot is loaded and Raft re-applies the committed log
//!   after it.
//!
//! Readers outside Raft get the state through a `watch` channel published
//! after every applied batch (STYLE.md §5: one owner, snapshots for
//! readers).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::raft::{NodeId, TypeConfig};
use idunno_state::{Applied, ClusterState};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn io_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write(&e).into()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read(&e).into()
}

/// The Raft log on disk. Cheap to clone (the database and the tail are
/// shared with the log reader Raft asks for).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    tail: Arc<Mutex<Tail>>,
}

/// The newest log entries, decoded: a run of consecutive indexes that
/// always equals what the disk holds at those indexes (every change to the
/// disk's log is made to the tail after it is durable).
#[derive(Default)]
pub struct Tail {
    entries: VecDeque<(Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Tail {
    /// At most this many entries…
    const ENTRIES: usize = 1024;
    /// …and at most this many bytes of their encoded form.
    const BYTES: usize = 16 << 20;

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn next(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// An entry just written at its index: it follows the run, or starts a
    /// new one (Raft truncates before it writes over an index).
    fn push(&mut self, entry: Entry<TypeConfig>, size: usize) {
        if self.next().is_some_and(|n| n != entry.log_id.index) {
            self.clear();
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > Self::ENTRIES || (self.bytes > Self::BYTES && self.entries.len() > 1) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// Entries at `index` and after were removed.
    fn truncate(&mut self, index: u64) {
        while self.next().is_some_and(|n| n > index) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Entries up to `index` were removed.
    fn purge(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            self.pop_front();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// The entries of `range` if the tail holds every one of them.
    fn get(&self, range: &impl RangeBounds<u64>) -> Option<Vec<Entry<TypeConfig>>> {
        let (first, next) = (self.first()?, self.next()?);
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s.checked_add(1)?,
            Bound::Unbounded => return None,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1)?,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => next,
        };
        if start < first || start >= next || end > next {
            return None;
        }
        let from = (start - first) as usize;
        let to = end.saturating_sub(first) as usize;
        Some(self.entries.range(from..to.max(from)).map(|(e, _)| e.clone()).collect())
    }
}

impl LogStore {
    pub fn open(dir: &Path) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("log.redb")).map_err(std::io::Error::other)?;
        // Create the tables so that readers never meet a missing one.
        let tx = db.begin_write().map_err(std::io::Error::other)?;
        tx.open_table(LOGS).map_err(std::io::Error::other)?;
        tx.open_table(META).map_err(std::io::Error::other)?;
        tx.commit().map_err(std::io::Error::other)?;
        Ok(LogStore { db: Arc::new(db), tail: Arc::default() })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether nothing was ever stored: a node with an empty log and no
    /// vote may bootstrap a new group.
    pub fn is_empty(&self) -> Result<bool, std::io::Error> {
        let tx = self.db.begin_read().map_err(std::io::Error::other)?;
        let logs = tx.open_table(LOGS).map_err(std::io::Error::other)?;
        let meta = tx.open_table(META).map_err(std::io::Error::other)?;
        Ok(logs.is_empty().map_err(std::io::Error::other)?
            && meta.get("vote").map_err(std::io::Error::other)?.is_none())
    }

    fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &str) -> StoreResult<Option<T>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(META).map_err(read_err)?;
        match table.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put_meta<T: Serialize>(&self, key: &str, value: &T, durability: Durability) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        let mut tx = self.db.begin_write().map_err(io_err)?;
        tx.set_durability(durability).map_err(io_err)?;
        {
            let mut table = tx.open_table(META).map_err(io_err)?;
            table.insert(key, bytes.as_slice()).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        if let Some(entries) = self.tail().get(&range) {
            return Ok(entries);
        }
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(LOGS).map_err(read_err)?;
        let mut out = Vec::new();
        for item in table.range(range).map_err(read_err)? {
            let (_, v) = item.map_err(read_err)?;
            out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta("last_purged")?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(LOGS).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(read_err)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.put_meta("vote", vote, Durability::Immediate)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.get_meta("vote")
    }

    /// Raft needs the committed index only to apply sooner after a
    /// restart; a lost one is learnt again from the leader. So it is not
    /// fsync'd on its own (it reaches the disk with the next log write),
    /// where it would double the syncs of every commit.
    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        self.put_meta("committed", &committed, Durability::None)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let tx = self.db.begin_write().map_err(io_err)?;
        let mut written = Vec::new();
        {
            let mut table = tx.open_table(LOGS).map_err(io_err)?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(io_err)?;
                table.insert(e.log_id.index, bytes.as_slice()).map_err(io_err)?;
                written.push((e, bytes.len()));
            }
        }
        // redb's default durability fsyncs before commit returns.
        let r = tx.commit().map_err(std::io::Error::other);
        let failed = r.as_ref().err().map(|e| std::io::Error::other(e.to_string()));
        {
            let mut tail = self.tail();
            match failed {
                // What the disk holds now is not known: read it from there.
                Some(_) => tail.clear(),
                None => written.into_iter().for_each(|(e, size)| tail.push(e, size)),
            }
        }
        callback.log_io_completed(r);
        match failed {
            Some(e) => Err(io_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut table = tx.open_table(LOGS).map_err(io_err)?;
            table.retain_in(log_id.index.., |_, _| false).map_err(io_err)?;
        }
        let r = tx.commit().map_err(io_err);
        let mut tail = self.tail();
        match r {
            Ok(()) => tail.truncate(log_id.index),
            Err(_) => tail.clear(),
        }
        r
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(&log_id).map_err(io_err)?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut meta = tx.open_table(META).map_err(io_err)?;
            meta.insert("last_purged", bytes.as_slice()).map_err(io_err)?;
            let mut table = tx.open_table(LOGS).map_err(io_err)?;
            table.retain_in(..=log_id.index, |_, _| false).map_err(io_err)?;
        }
        let r = tx.commit().map_err(io_err);
        let mut tail = self.tail();
        match r {
            Ok(()) => tail.purge(log_id.index),
            Err(_) => tail.clear(),
        }
        r
    }
}

/// What a snapshot holds: the state plus where in the log it stands.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId<NodeId>>,
    pub membership: StoredMembership<NodeId, openraft::BasicNode>,
    pub state: ClusterState,
}

/// The first bytes of a state in its binary form, then a format number
/// (one byte): a node refuses a format newer than its own with an error
/// that says so, instead of misreading it, so a rolling upgrade that
/// changes the format can be planned (every node upgraded before any
/// writes the new one).
const STATE_MAGIC: &[u8] = b"IDSTATE";
/// 6: each job's loss; 5: where served models are placed; 4: served
/// models (`serving`), and assignment notes with each worker's share of
/// the queries and its slots; 3: the draining nodes (`nodes`); 2: the
/// timeline (`events`). 1 to 5 are still read.
const STATE_FORMAT: u8 = 7;

impl SmData {
    /// The state's bytes in a snapshot: [`STATE_MAGIC`], the format, then
    /// postcard (compact, no field names: 3–4 times smaller than JSON).
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = Vec::with_capacity(STATE_MAGIC.len() + 1);
        out.extend_from_slice(STATE_MAGIC);
        out.push(STATE_FORMAT);
        postcard::to_extend(self, out)
    }

    /// Read a state in the binary form or in either JSON form the node
    /// wrote before (the whole state as one JSON document, in the domains'
    /// shape or the older flat one).
    pub fn decode(bytes: &[u8]) -> Result<SmData, String> {
        if let Some(rest) = bytes.strip_prefix(STATE_MAGIC) {
            return match rest.split_first() {
                Some((&STATE_FORMAT, body)) => postcard::from_bytes(body).map_err(|e| format!("the state: {e}")),
                Some((1, body)) => {
                    postcard::from_bytes::<SmDataV1>(body).map(SmData::from).map_err(|e| format!("the state: {e}"))
                }
                Some((2, body)) => {
                    postcard::from_bytes::<SmDataV2>(body).map(SmData::from).map_err(|e| format!("the state: {e}"))
                }
                Some((3, body)) => {
                    postcard::from_bytes::<SmDataV3>(body).map(SmData::from).map_err(|e| format!("the state: {e}"))
                }
                Some((4, body)) => {
                    postcard::from_bytes::<SmDataV4>(body).map(SmData::from).map_err(|e| format!("the state: {e}"))
                }
                Some((5, body)) => {
                    postcard::from_bytes::<SmDataV5>(body).map(SmData::from).map_err(|e| format!("the state: {e}"))
                }
                Some((6, body)) => {
                    postcard::from_bytes::<SmDataV6>(body).map(SmData::from).map_err(|e| format!("the state: {e}"))
                }
                Some((format, _)) => {
                    Err(format!("the state is in format {format}; this node reads format {STATE_FORMAT} (upgrade it)"))
                }
                None => Err("the state ends inside its header".into()),
            };
        }
        match serde_json::from_slice::<SmData>(bytes) {
            Ok(data) => Ok(data),
            Err(e) => {
                #[derive(Deserialize)]
                struct Flat {
                    last_applied: Option<LogId<NodeId>>,
                    membership: StoredMembership<NodeId, openraft::BasicNode>,
                    state: idunno_state::FlatClusterState,
                }
                let flat: Flat = serde_json::from_slice(bytes).map_err(|_| format!("the state: {e}"))?;
                Ok(SmData { last_applied: flat.last_applied, membership: flat.membership, state: flat.state.into() })
            }
        }
    }
}

/// A state in format 1: before the timeline.
#[derive(Deserialize)]
struct SmDataV1 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    namespace: idunno_state::Namespace,
    inference: idunno_state::JobTableV3,
    training: idunno_state::TrainingTable,
}

impl From<SmDataV1> for SmData {
    fn from(v: SmDataV1) -> Self {
        let SmDataV1 { last_applied, membership, namespace, inference, training } = v;
        let events = Default::default();
        SmData::from(SmDataV2 { last_applied, membership, namespace, inference, training, events })
    }
}

/// A state in format 2: before the draining nodes.
#[derive(Deserialize)]
struct SmDataV2 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    namespace: idunno_state::Namespace,
    inference: idunno_state::JobTableV3,
    training: idunno_state::TrainingTable,
    events: idunno_state::EventLog,
}

impl From<SmDataV2> for SmData {
    fn from(v: SmDataV2) -> Self {
        let SmDataV2 { last_applied, membership, namespace, inference, training, events } = v;
        let nodes = Default::default();
        SmData::from(SmDataV3 { last_applied, membership, namespace, inference, training, events, nodes })
    }
}

/// A state in format 3: before served models and the notes' per-worker
/// query shares.
#[derive(Deserialize)]
struct SmDataV3 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    namespace: idunno_state::Namespace,
    inference: idunno_state::JobTableV3,
    training: idunno_state::TrainingTable,
    events: idunno_state::EventLog,
    nodes: idunno_state::NodeTable,
}

impl From<SmDataV3> for SmData {
    fn from(v: SmDataV3) -> Self {
        let state = ClusterState {
            namespace: v.namespace,
            inference: v.inference.into(),
            training: v.training,
            events: v.events,
            nodes: v.nodes,
            serving: Default::default(),
        };
        SmData { last_applied: v.last_applied, membership: v.membership, state }
    }
}

/// A state in format 4: before served models were placed.
#[derive(Deserialize)]
struct SmDataV4 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: ClusterStateV4,
}

#[derive(Deserialize)]
struct ClusterStateV4 {
    namespace: idunno_state::Namespace,
    inference: idunno_state::JobTableV5,
    training: idunno_state::TrainingTable,
    events: idunno_state::EventLog,
    nodes: idunno_state::NodeTable,
    serving: idunno_state::ServingTableV4,
}

impl From<SmDataV4> for SmData {
    fn from(v: SmDataV4) -> Self {
        let ClusterStateV4 { namespace, inference, training, events, nodes, serving } = v.state;
        let inference = inference.into();
        let state = ClusterState { namespace, inference, training, events, nodes, serving: serving.into() };
        SmData { last_applied: v.last_applied, membership: v.membership, state }
    }
}

/// A state in format 5: before each job's loss.
#[derive(Deserialize)]
struct SmDataV5 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: ClusterStateV5,
}

#[derive(Deserialize)]
struct ClusterStateV5 {
    namespace: idunno_state::Namespace,
    inference: idunno_state::JobTableV5,
    training: idunno_state::TrainingTable,
    events: idunno_state::EventLog,
    nodes: idunno_state::NodeTable,
    serving: idunno_state::ServingTable,
}

impl From<SmDataV5> for SmData {
    fn from(v: SmDataV5) -> Self {
        let ClusterStateV5 { namespace, inference, training, events, nodes, serving } = v.state;
        let state = ClusterState { namespace, inference: inference.into(), training, events, nodes, serving };
        SmData { last_applied: v.last_applied, membership: v.membership, state }
    }
}

/// A state in format 6: before sharded input sets.
#[derive(Deserialize)]
struct SmDataV6 {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, openraft::BasicNode>,
    state: ClusterStateV6,
}

#[derive(Deserialize)]
struct ClusterStateV6 {
    namespace: idunno_state::Namespace,
    inference: idunno_state::JobTableV6,
    training: idunno_state::TrainingTable,
    events: idunno_state::EventLog,
    nodes: idunno_state::NodeTable,
    serving: idunno_state::ServingTable,
}

impl From<SmDataV6> for SmData {
    fn from(v: SmDataV6) -> Self {
        let ClusterStateV6 { namespace, inference, training, events, nodes, serving } = v.state;
        let state = ClusterState { namespace, inference: inference.into(), training, events, nodes, serving };
        SmData { last_applied: v.last_applied, membership: v.membership, state }
    }
}

/// A snapshot as stored on disk: where it stands in the log, and the
/// state's bytes.
pub struct SnapshotFile {
    pub meta: SnapshotMeta<NodeId, openraft::BasicNode>,
    pub data: Vec<u8>,
}

/// The file's first bytes (then the metadata's length as a little-endian
/// u32, the metadata as JSON, and the state's bytes as they are).
const SNAPSHOT_MAGIC: &[u8] = b"IDUNNO-SNAPSHOT-1\n";

/// The snapshot file, and the name of the older format (one JSON
/// document, the state's bytes as an array of numbers: 3.6 times their
/// size), still read after an upgrade.
const SNAPSHOT: &str = "snapshot.bin";
const LEGACY_SNAPSHOT: &str = "snapshot.json";

impl SnapshotFile {
    pub fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        let meta = serde_json::to_vec(&self.meta)?;
        let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + 4 + meta.len() + self.data.len());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        // Metadata is a few hundred bytes: far below u32::MAX.
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.data);
        Ok(out)
    }

    /// Read a snapshot file of either format; an error says what is wrong
    /// with it (and nothing is believed before the bytes are there).
    pub fn decode(mut bytes: Vec<u8>) -> Result<SnapshotFile, String> {
        let Some(rest) = bytes.strip_prefix(SNAPSHOT_MAGIC) else {
            #[derive(Deserialize)]
            struct Legacy {
                meta: SnapshotMeta<NodeId, openraft::BasicNode>,
                data: Vec<u8>,
            }
            let l: Legacy = serde_json::from_slice(&bytes).map_err(|e| format!("not a snapshot file: {e}"))?;
            return Ok(SnapshotFile { meta: l.meta, data: l.data });
        };
        let len = rest.get(..4).ok_or("the snapshot file ends inside its header")?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let meta = rest.get(4..4 + len).ok_or("the snapshot file ends inside its metadata")?;
        let meta = serde_json::from_slice(meta).map_err(|e| format!("the snapshot's metadata: {e}"))?;
        let start = SNAPSHOT_MAGIC.len() + 4 + len;
        let data = bytes.split_off(start);
        Ok(SnapshotFile { meta, data })
    }
}

/// The snapshot kept in `dir`, if any.
fn read_snapshot(dir: &Path) -> std::io::Result<Option<SnapshotFile>> {
    for name in [SNAPSHOT, LEGACY_SNAPSHOT] {
        match std::fs::read(dir.join(name)) {
            Ok(bytes) => {
                let file = SnapshotFile::decode(bytes)
                    .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.join(name).display())))?;
                return Ok(Some(file));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// The state machine. Owned by Raft; everyone else reads `watch()`.
pub struct StateMachineStore {
    data: SmData,
    dir: PathBuf,
    published: watch::Sender<Arc<SmData>>,
    snapshot_seq: u64,
}

impl StateMachineStore {
    /// Open at `dir`, loading the last snapshot if there is one.
    pub fn open(dir: &Path) -> Result<Self, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let data = match read_snapshot(dir)? {
            Some(file) => SmData::decode(&file.data)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.join(SNAPSHOT).display())))?,
            None => SmData::default(),
        };
        let (published, _) = watch::channel(Arc::new(data.clone()));
        Ok(StateMachineStore { data, dir: dir.to_path_buf(), published, snapshot_seq: 0 })
    }

    /// The applied state as of the last batch.
    pub fn watch(&self) -> watch::Receiver<Arc<SmData>> {
        self.published.subscribe()
    }
}

/// Replace the snapshot in `dir` atomically and durably.
fn write_snapshot(dir: &Path, file: &SnapshotFile) -> StoreResult<()> {
    let bytes = file.encode().map_err(io_err)?;
    let tmp = dir.join("snapshot.bin.tmp");
    let write = || -> std::io::Result<()> {
        std::fs::write(&tmp, &bytes)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dir.join(SNAPSHOT))?;
        // The new file is durable: the older format may go.
        match std::fs::remove_file(dir.join(LEGACY_SNAPSHOT)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::File::open(dir)?.sync_all()
    };
    let written = write();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io_err)
}

/// Builds a snapshot from a copy of the state taken when Raft asks.
pub struct SnapshotBuilder {
    data: SmData,
    dir: PathBuf,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        let data = self.data.encode().map_err(io_err)?;
        let last = self.data.last_applied;
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.seq),
            None => format!("none-{}", self.seq),
        };
        let meta = SnapshotMeta { last_log_id: last, last_membership: self.data.membership.clone(), snapshot_id };
        write_snapshot(&self.dir, &SnapshotFile { meta: meta.clone(), data: data.clone() })?;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, openraft::BasicNode>)> {
        Ok((self.data.last_applied, self.data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            self.data.last_applied = Some(e.log_id);
            match e.payload {
                EntryPayload::Blank => out.push(Ok(idunno_state::Reply::Done)),
                EntryPayload::Normal(cmd) => out.push(self.data.state.apply(cmd)),
                EntryPayload::Membership(m) => {
                    self.data.membership = StoredMembership::new(Some(e.log_id), m);
                    out.push(Ok(idunno_state::Reply::Done));
                }
            }
        }
        self.published.send_replace(Arc::new(self.data.clone()));
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_seq += 1;
        SnapshotBuilder { data: self.data.clone(), dir: self.dir.clone(), seq: self.snapshot_seq }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let bytes = snapshot.into_inner();
        let data = SmData::decode(&bytes).map_err(|e| read_err(std::io::Error::other(e)))?;
        write_snapshot(&self.dir, &SnapshotFile { meta: meta.clone(), data: bytes })?;
        self.data = data;
        self.data.last_applied = meta.last_log_id;
        self.data.membership = meta.last_membership.clone();
        self.published.send_replace(Arc::new(self.data.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let file = read_snapshot(&self.dir).map_err(read_err)?;
        Ok(file.map(|f| Snapshot { meta: f.meta, snapshot: Box::new(Cursor::new(f.data)) }))
    }
}
