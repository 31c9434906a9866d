//! Why a publication was refused: the errors of the operators crate.
//!
//! It owns [`OperatorError`] and the exact texts users read (`caravan publish` and `caravan replay` print them
//! when they refuse a definition). It never decides what happens next: a refused publication is the input's
//! fault and retrying it cannot help; the engine adds its context and classifies the failure. A document that
//! does not validate is not an error here but a list of [`Problem`](crate::journey::Problem)s, one per node
//! and path.
//!
//! ```
//! use caravan_operators::OperatorError;
//! let e = OperatorError::TemplateVersionRefused { id: "bg".into(), version: 1, newest: 2 };
//! assert_eq!(e.to_string(), "template `bg` version 1 is refused: version 2 is already published");
//! ```

use caravan_schemas::Id;

/// Why the operators refused something.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OperatorError {
    /// A journey version equal to or lower than the newest published one, with another document (an
    /// identical re-publication is accepted).
    #[error(
        "journey `{id}` version {version} is refused: version {newest} is already published{}",
        another_document(.version, .newest)
    )]
    JourneyVersionRefused {
        /// The journey id.
        id: String,
        /// The version refused.
        version: u32,
        /// The newest version published.
        newest: u32,
    },
    /// A buying group template for a solution interest that another template (id) already has.
    #[error("template `{id}` is refused: solution interest `{solution}` already has template `{existing}`")]
    TemplateSolutionTaken {
        /// The template id refused.
        id: String,
        /// The solution interest.
        solution: Id,
        /// The template id the solution interest has.
        existing: String,
    },
    /// A template version equal to or lower than the newest published one, with another document (an
    /// identical re-publication is accepted).
    #[error("template `{id}` version {version} is refused: version {newest} is already published")]
    TemplateVersionRefused {
        /// The template id.
        id: String,
        /// The version refused.
        version: u32,
        /// The newest version published.
        newest: u32,
    },
}

/// The end of a refused journey version's message: whether the version itself is taken.
fn another_document(version: &u32, newest: &u32) -> &'static str {
    if version == newest { " with another document" } else { "" }
}

/// Result of the operators' fallible calls.
pub type Result<T> = std::result::Result<T, OperatorError>;
