//! The engine's error type: what failed, and whether it is the input's fault, the environment's, or ours.

use caravan_state::StateError;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The state store failed.
    #[error("state: {0}")]
    State(#[from] StateError),
    /// A file or stream failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The invocation cannot work (mismatched state and outputs, shorter input, ...).
    #[error("{0}")]
    Invalid(String),
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
    /// A stage stopped because another one failed first.
    #[error("stopped because another stage failed")]
    Stopped,
}

/// Whose fault an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Domain {
    /// The user's input or invocation.
    Input,
    /// The environment: disk, network, other processes.
    External,
    /// Caravan itself.
    Internal,
}

impl EngineError {
    pub(crate) fn io(context: String, source: std::io::Error) -> EngineError {
        EngineError::Io { context, source }
    }

    /// Whose fault it is.
    pub fn domain(&self) -> Domain {
        match self {
            EngineError::Invalid(_) => Domain::Input,
            EngineError::State(_) | EngineError::Io { .. } => Domain::External,
            EngineError::Internal(_) | EngineError::Stopped => Domain::Internal,
        }
    }
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, EngineError>;
