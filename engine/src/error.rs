//! The engine's error type: what failed, whether it is the input's fault, the environment's, or ours, and
//! what to do about it (the one place that decides whether a failure is retried).

use caravan_state::StateError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The state store failed.
    #[error("state: {0}")]
    State(Box<StateError>),
    /// A file or stream failed.
    #[error("{}: {}", .0.0, .0.1)]
    Io(Box<(String, std::io::Error)>),
    /// The invocation cannot work (mismatched state and outputs, shorter input, ...).
    #[error("{0}")]
    Invalid(String),
    /// A bug or a broken invariant.
    #[error("internal error: {0}")]
    Internal(String),
    /// A stage stopped because another one failed first.
    #[error("stopped because another stage failed")]
    Stopped,
    /// A Kafka client call failed.
    #[error("kafka: {}: {}", .0.context, .0.source)]
    Kafka(Box<KafkaFailure>),
}

impl From<StateError> for EngineError {
    fn from(e: StateError) -> EngineError {
        EngineError::State(Box::new(e))
    }
}

/// A failed Kafka client call: what was being done, and librdkafka's error.
#[derive(Debug)]
pub struct KafkaFailure {
    /// What was being done.
    pub context: String,
    /// The client's error.
    pub source: KafkaError,
}

/// What to do after a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Nothing helps: stop (a fenced producer, a fatal client error, bad input or invocation, a bug).
    Never,
    /// The transaction in flight cannot commit: abort it, go back to the committed state and redo the work.
    Abort,
    /// Transient: the same call may succeed after a pause.
    Backoff,
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
        EngineError::Io(Box::new((context, source)))
    }

    /// A failed Kafka client call.
    pub(crate) fn kafka(context: &str, source: KafkaError) -> EngineError {
        EngineError::Kafka(Box::new(KafkaFailure { context: context.to_owned(), source }))
    }

    /// Whose fault it is.
    pub fn domain(&self) -> Domain {
        match self {
            EngineError::Invalid(_) => Domain::Input,
            EngineError::State(_) | EngineError::Io(_) | EngineError::Kafka(_) => Domain::External,
            EngineError::Internal(_) | EngineError::Stopped => Domain::Internal,
        }
    }

    /// What to do about it. Kafka errors follow librdkafka's classification: a transactional error says
    /// itself whether it is fatal, needs an abort or may be retried; a fenced producer or a fatal error is
    /// never retried; any other failure of a call inside a transaction aborts it. A failed state write
    /// poisons the store: never retried in place (a restart recovers from the last commit).
    pub fn retry(&self) -> Retry {
        match self {
            EngineError::Kafka(f) => match &f.source {
                KafkaError::Transaction(e) if e.is_fatal() => Retry::Never,
                KafkaError::Transaction(e) if e.txn_requires_abort() => Retry::Abort,
                KafkaError::Transaction(e) if e.is_retriable() => Retry::Backoff,
                other => match other.rdkafka_error_code() {
                    Some(RDKafkaErrorCode::Fatal | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::Fenced) => {
                        Retry::Never
                    }
                    _ => Retry::Abort,
                },
            },
            EngineError::Io(_) => Retry::Backoff,
            EngineError::State(_) | EngineError::Invalid(_) | EngineError::Internal(_) | EngineError::Stopped => {
                Retry::Never
            }
        }
    }
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, EngineError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small_and_kafka_errors_carry_their_decision() {
        // Large payloads are boxed; the message variants (a `String`) set the size.
        assert!(std::mem::size_of::<EngineError>() <= 32, "{}", std::mem::size_of::<EngineError>());
        let kafka = |e| EngineError::kafka("committing a transaction", e);
        // (librdkafka's transactional errors classify themselves; they cannot be built outside a client.)
        for fatal in [RDKafkaErrorCode::ProducerFenced, RDKafkaErrorCode::Fatal, RDKafkaErrorCode::Fenced] {
            assert_eq!(kafka(KafkaError::MessageProduction(fatal)).retry(), Retry::Never, "{fatal:?}");
        }
        let timeout = kafka(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut));
        assert_eq!(timeout.retry(), Retry::Abort, "a call in a transaction that failed aborts it");
        assert_eq!(timeout.domain(), Domain::External);
        assert!(timeout.to_string().starts_with("kafka: committing a transaction: "), "{timeout}");
        assert_eq!(EngineError::Invalid("x".into()).retry(), Retry::Never);
    }
}
