//! Stable, machine-readable error codes. Clients match on these strings; never rename one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    // Media problems: the input itself is at fault, retrying will not help.
    NotAVideo,
    NoVideoStream,
    UnsupportedCodec,
    TooLong,
    TooLarge,
    CorruptStream,
    // Processing problems.
    TranscodeTimeout,
    RetriesExhausted,
    /// An encoded tier did not match its source (frames, duration) and was not put live.
    VerificationFailed,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::NotAVideo,
        ErrorCode::NoVideoStream,
        ErrorCode::UnsupportedCodec,
        ErrorCode::TooLong,
        ErrorCode::TooLarge,
        ErrorCode::CorruptStream,
        ErrorCode::TranscodeTimeout,
        ErrorCode::RetriesExhausted,
        ErrorCode::VerificationFailed,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotAVideo => "not-a-video",
            ErrorCode::NoVideoStream => "no-video-stream",
            ErrorCode::UnsupportedCodec => "unsupported-codec",
            ErrorCode::TooLong => "too-long",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::CorruptStream => "corrupt-stream",
            ErrorCode::TranscodeTimeout => "transcode-timeout",
            ErrorCode::RetriesExhausted => "retries-exhausted",
            ErrorCode::VerificationFailed => "verification-failed",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the failure lies in the input, so that running the job again cannot succeed.
    pub fn is_input_fault(self) -> bool {
        matches!(
            self,
            ErrorCode::NotAVideo
                | ErrorCode::NoVideoStream
                | ErrorCode::UnsupportedCodec
                | ErrorCode::TooLong
                | ErrorCode::TooLarge
                | ErrorCode::CorruptStream
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown error code {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_matches_serde_and_parses_back() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(code.as_str().parse::<ErrorCode>().unwrap(), code);
        }
    }
}
