use vtx_domain::ErrorCode;

/// What can go wrong in the media engine. Each variant maps to one stable [`ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("the input is not a media file FFmpeg can read")]
    NotAVideo,
    #[error("the input has no video stream")]
    NoVideoStream,
    #[error("unsupported codec: {0}")]
    UnsupportedCodec(String),
    #[error("the input lasts {seconds:.1} s, over the limit of {limit} s")]
    TooLong { seconds: f64, limit: u64 },
    #[error("the input is too large: {0}")]
    TooLarge(String),
    #[error("the input is corrupt: {0}")]
    CorruptStream(String),
    #[error("media work ran past its time limit")]
    Timeout,
    #[error("FFmpeg failed while {context}: {source}")]
    Ffmpeg {
        context: &'static str,
        #[source]
        source: ffmpeg_next::Error,
    },
    /// The file is a video, but its streams cannot go into MPEG-TS chunks (send it whole).
    #[error("cannot cut into MPEG-TS chunks: {0}")]
    NotChunkable(String),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl MediaError {
    pub fn code(&self) -> ErrorCode {
        match self {
            MediaError::NotAVideo => ErrorCode::NotAVideo,
            MediaError::NoVideoStream => ErrorCode::NoVideoStream,
            MediaError::UnsupportedCodec(_) | MediaError::NotChunkable(_) => {
                ErrorCode::UnsupportedCodec
            }
            MediaError::TooLong { .. } => ErrorCode::TooLong,
            MediaError::TooLarge(_) => ErrorCode::TooLarge,
            MediaError::CorruptStream(_) => ErrorCode::CorruptStream,
            MediaError::Timeout => ErrorCode::TranscodeTimeout,
            MediaError::Ffmpeg { .. } | MediaError::Io(_) => ErrorCode::Internal,
        }
    }

    /// FFmpeg ran out of memory (`ENOMEM`): under a memory limit, the input asked for more.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(
            self,
            MediaError::Ffmpeg {
                source: ffmpeg_next::Error::Other { errno },
                ..
            } if *errno == libc::ENOMEM
        )
    }

    pub(crate) fn ffmpeg(context: &'static str) -> impl FnOnce(ffmpeg_next::Error) -> Self {
        move |source| MediaError::Ffmpeg { context, source }
    }
}
