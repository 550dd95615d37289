//! Online inference (`idunno serve`): every node answers the Open
//! Inference Protocol (KServe v2) for the models the replicated state
//! says are served. A request is parsed where it arrives (`codec`), waits
//! in that node's queue for the model, goes out in a dynamic batch to a
//! worker that has the model loaded (`batch`), and is sent to another
//! worker if that one fails, within the request's deadline.

pub mod batch;
pub mod codec;
pub mod entry;
pub mod grpc;
pub mod http;
pub mod stats;

pub use entry::{ServeError, Serving};
