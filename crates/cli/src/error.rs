//! The one place errors become exit codes.

use idunno_rpc::RpcError;

/// A command failed: `message` is printed as one line on stderr, `code` is
/// the exit status (2 for bad usage or input, 1 for everything else).
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        CliError { code: 2, message: message.into() }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        CliError { code: 1, message: message.into() }
    }
}

impl From<RpcError> for CliError {
    fn from(e: RpcError) -> Self {
        let code = if e.is_bad_input() { 2 } else { 1 };
        let mut message = e.to_string();
        if idunno_net::keys().is_none() && speaks_tls(&e) {
            message
                .push_str(" (the node may need the cluster secret: pass --secret-file FILE or set IDUNNO_SECRET_FILE)");
        }
        CliError { code, message }
    }
}

/// What a plaintext client sees of a node that speaks TLS: the node's TLS
/// alert read as an HTTP/2 frame, or a connection that never gets going.
fn speaks_tls(e: &RpcError) -> bool {
    match e {
        RpcError::Unreachable { reason, .. } => !reason.contains("refused"),
        RpcError::Remote { message, .. } => {
            ["h2 protocol error", "transport error", "connection reset"].iter().any(|m| message.contains(m))
        }
        RpcError::BadAddress { .. } => false,
    }
}

impl From<idunno_node::NodeError> for CliError {
    fn from(e: idunno_node::NodeError) -> Self {
        let code = if e.is_bad_input() { 2 } else { 1 };
        CliError { code, message: e.to_string() }
    }
}
