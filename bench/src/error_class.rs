//! Errors by class: counted per task in a fixed array, named the way the API does.

use std::collections::BTreeMap;

use reqwest::StatusCode;

/// Why one HTTP exchange did not succeed. The classes follow docs/api.md § Errors, so that a
/// reader of the table knows what the server meant (503 = no leader or no quorum, 504 =
/// outcome unknown) without reading logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The connection could not be made or was lost.
    Connect,
    /// No answer within `--request-timeout`.
    Timeout,
    /// Any other transport failure (reading the body, a malformed answer).
    Transport,
    /// 400/422: the request was invalid.
    BadRequest,
    /// 404: topic (or group route) not found.
    NotFound,
    /// 409: conflict or fenced group member.
    Conflict,
    /// 413: too large.
    TooLarge,
    /// 416: offset out of range (the consumer re-positions).
    OffsetOutOfRange,
    /// 429: quota.
    Throttled,
    /// 503: no quorum or no leader (retried after Retry-After).
    Unavailable,
    /// 504: outcome unknown (the records may have been written).
    OutcomeUnknown,
    /// Another 4xx.
    OtherClient,
    /// Another 5xx.
    OtherServer,
    /// A 200 answer the bench could not parse.
    Decode,
}

const CLASSES: [ErrorClass; 14] = [
    ErrorClass::Connect,
    ErrorClass::Timeout,
    ErrorClass::Transport,
    ErrorClass::BadRequest,
    ErrorClass::NotFound,
    ErrorClass::Conflict,
    ErrorClass::TooLarge,
    ErrorClass::OffsetOutOfRange,
    ErrorClass::Throttled,
    ErrorClass::Unavailable,
    ErrorClass::OutcomeUnknown,
    ErrorClass::OtherClient,
    ErrorClass::OtherServer,
    ErrorClass::Decode,
];

impl ErrorClass {
    /// The class of an HTTP error status (`reqwest` and `hyper` share the type).
    pub fn of_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 | 422 => ErrorClass::BadRequest,
            404 => ErrorClass::NotFound,
            409 => ErrorClass::Conflict,
            413 => ErrorClass::TooLarge,
            416 => ErrorClass::OffsetOutOfRange,
            429 => ErrorClass::Throttled,
            503 => ErrorClass::Unavailable,
            504 => ErrorClass::OutcomeUnknown,
            400..=499 => ErrorClass::OtherClient,
            _ => ErrorClass::OtherServer,
        }
    }

    /// The class of a failed `reqwest` exchange.
    pub fn of_transport(err: &reqwest::Error) -> Self {
        if err.is_timeout() {
            ErrorClass::Timeout
        } else if err.is_connect() {
            ErrorClass::Connect
        } else if err.is_decode() {
            ErrorClass::Decode
        } else {
            ErrorClass::Transport
        }
    }

    /// Label in the table and key in the JSON report.
    pub fn label(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::Transport => "transport",
            ErrorClass::BadRequest => "400_bad_request",
            ErrorClass::NotFound => "404_not_found",
            ErrorClass::Conflict => "409_conflict",
            ErrorClass::TooLarge => "413_too_large",
            ErrorClass::OffsetOutOfRange => "416_offset_out_of_range",
            ErrorClass::Throttled => "429_throttled",
            ErrorClass::Unavailable => "503_unavailable",
            ErrorClass::OutcomeUnknown => "504_outcome_unknown",
            ErrorClass::OtherClient => "4xx_other",
            ErrorClass::OtherServer => "5xx_other",
            ErrorClass::Decode => "decode",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Error counts of one task; merged into the run's totals.
#[derive(Debug, Clone, Default)]
pub struct ErrorCounts {
    counts: [u64; CLASSES.len()],
}

impl ErrorCounts {
    /// Counts one error.
    pub fn add(&mut self, class: ErrorClass) {
        self.counts[class.index()] += 1;
    }

    /// Adds another task's counts.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    /// Non-zero classes by label, for the report.
    pub fn by_label(&self) -> BTreeMap<&'static str, u64> {
        CLASSES
            .iter()
            .filter(|c| self.counts[c.index()] > 0)
            .map(|c| (c.label(), self.counts[c.index()]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_indexed_in_declaration_order() {
        for (i, c) in CLASSES.iter().enumerate() {
            assert_eq!(c.index(), i, "{}", c.label());
        }
    }

    #[test]
    fn counts_merge_by_class() {
        let mut a = ErrorCounts::default();
        a.add(ErrorClass::of_status(StatusCode::SERVICE_UNAVAILABLE));
        let mut b = ErrorCounts::default();
        b.add(ErrorClass::of_status(StatusCode::GATEWAY_TIMEOUT));
        b.add(ErrorClass::of_status(StatusCode::SERVICE_UNAVAILABLE));
        a.merge(&b);
        let m = a.by_label();
        assert_eq!(m.values().sum::<u64>(), 3);
        assert_eq!(m.get("503_unavailable"), Some(&2));
        assert_eq!(m.get("504_outcome_unknown"), Some(&1));
    }
}
