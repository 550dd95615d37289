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
        CliError { code, message: e.to_string() }
    }
}

impl From<idunno_node::NodeError> for CliError {
    fn from(e: idunno_node::NodeError) -> Self {
        let code = if e.is_bad_input() { 2 } else { 1 };
        CliError { code, message: e.to_string() }
    }
}
