//! Why a text is not what a reader here expected: a definition document, a strict RFC 3339 timestamp, a
//! journey duration.
//!
//! It owns [`SchemaError`], the crate's error for its readers of text, and the exact texts users read (the
//! CLI, the validation problems of a journey, the rejected records of SPEC §4 quote them, and tests match
//! them). It never decides what happens next: every error here is the input's fault and retrying cannot help;
//! the caller adds its context (a field, a node path) and classifies the failure. A stored value that cannot
//! be read is [`crate::state::CodecError`]'s, which the state crate matches on.
//!
//! ```
//! use caravan_schemas::SchemaError;
//! use caravan_schemas::time::parse_duration;
//! let e = parse_duration("2y").unwrap_err();
//! assert_eq!(e, SchemaError::Duration("2y".into()));
//! assert_eq!(e.to_string(), "`2y` is not a duration (e.g. 30m, 6h, 2d, 1w)");
//! ```

/// Why a text could not be read. Each variant holds the text (or the parser's message) its message quotes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// A definition document is neither JSON nor YAML: the YAML parser's message, with line and column.
    #[error("{0}")]
    Document(String),
    /// A text does not have the shape of a strict RFC 3339 date-time.
    #[error("`{0}` is not an RFC 3339 timestamp")]
    NotRfc3339(String),
    /// An RFC 3339 text names a day the calendar does not have (month 13, 30 February).
    #[error("`{0}` is not a calendar date")]
    NotCalendarDate(String),
    /// An RFC 3339 text has an hour, minute or second out of range (a leap second included).
    #[error("`{0}` has an out-of-range time of day")]
    TimeOfDay(String),
    /// An RFC 3339 instant before 1677 or after 2262: it does not fit in `i64` nanoseconds.
    #[error("`{0}` is outside the representable range (1677 to 2262)")]
    TimestampRange(String),
    /// A text is not a journey duration (`30m`, `6h`, `2d`, `1w`).
    #[error("`{0}` is not a duration (e.g. 30m, 6h, 2d, 1w)")]
    Duration(String),
}

/// Result of this crate's readers of text.
pub type Result<T> = std::result::Result<T, SchemaError>;

#[cfg(test)]
mod tests {
    use crate::definition::read_document;
    use crate::time::{Timestamp, parse_duration};

    /// The texts are the ones users, the engine and its tests have always read (these errors were strings).
    #[test]
    fn errors_keep_their_texts() {
        let ts = |text: &str| Timestamp::parse_rfc3339(text).expect_err(text).to_string();
        assert_eq!(ts("yesterday"), "`yesterday` is not an RFC 3339 timestamp");
        assert_eq!(ts("2026-01-01T00:00:00.Z"), "`2026-01-01T00:00:00.Z` is not an RFC 3339 timestamp");
        assert_eq!(ts("2025-02-29T00:00:00.000Z"), "`2025-02-29T00:00:00.000Z` is not a calendar date");
        assert_eq!(ts("2026-01-01T00:00:60Z"), "`2026-01-01T00:00:60Z` has an out-of-range time of day");
        assert_eq!(
            ts("9999-01-01T00:00:00Z"),
            "`9999-01-01T00:00:00Z` is outside the representable range (1677 to 2262)"
        );
        assert_eq!(parse_duration("2y").expect_err("2y").to_string(), "`2y` is not a duration (e.g. 30m, 6h, 2d, 1w)");
        let yaml = serde_yaml_ng::from_str::<serde_json::Value>("a: [").expect_err("broken").to_string();
        assert_eq!(read_document("a: [").expect_err("broken").to_string(), yaml);
    }
}
