//! Identifier types, parsed once at the edge so the core never re-checks them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = String, format = Uuid))]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// An upload session: chunks are stored under it until it completes.
    UploadId
);
uuid_id!(
    /// A video as viewers know it; its playback may be replaced by later tiers.
    VideoId
);
uuid_id!(
    /// One unit of transcoding work on a video.
    JobId
);

/// Position of a chunk within an upload, starting at 0, below [`ChunkIndex::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkIndex(u32);

impl ChunkIndex {
    /// No upload may have more chunks than this; it bounds what a client can make us track.
    pub const MAX: u32 = 10_000;

    pub fn new(n: u32) -> Option<Self> {
        (n < Self::MAX).then_some(Self(n))
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_index_is_bounded() {
        assert_eq!(ChunkIndex::new(0).map(ChunkIndex::get), Some(0));
        assert!(ChunkIndex::new(ChunkIndex::MAX - 1).is_some());
        assert!(ChunkIndex::new(ChunkIndex::MAX).is_none());
    }

    #[test]
    fn ids_round_trip_through_text() {
        let id = VideoId::new();
        assert_eq!(id.to_string().parse::<VideoId>().unwrap(), id);
        assert!("not-a-uuid".parse::<JobId>().is_err());
    }
}
