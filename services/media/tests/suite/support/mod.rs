//! Shared by the media tests: chunks encoded one by one as a worker encodes them, and the
//! per-rendition playlists a tier's publication writes over them.

use std::path::{Path, PathBuf};

use vtx_domain::live_ingest::{ChunkEncode, media_playlist};
use vtx_media::{CutChunk, Deadline, EncodeOptions, Limits, Tier, chunk_hls_dir, encode_chunk};

/// Encodes `chunk` into the fast tier as a worker does, and moves each rendition's HLS files to
/// `dir/hls/<rendition>/c<index>/`, where the tier's playlists find them.
pub fn encode_chunk_into(
    dir: &Path,
    chunk: &CutChunk,
) -> Result<ChunkEncode, vtx_media::MediaError> {
    let out = dir.join(format!("enc-{}", chunk.index));
    let e = encode_chunk(
        &chunk.path,
        0,
        Tier::Fast,
        &out,
        &Limits::default(),
        &EncodeOptions::default(),
        Deadline::none(),
    )?;
    for r in &e.renditions {
        let to = dir
            .join("hls")
            .join(&r.name)
            .join(format!("c{:05}", chunk.index));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::rename(chunk_hls_dir(&out, &r.name), &to).unwrap();
    }
    Ok(e)
}

/// Writes `dir/hls/<rendition>/index.m3u8` over the chunks' segments for every rendition of
/// `encoded` (in index order); returns (rendition, playlist).
pub fn write_playlists(dir: &Path, encoded: &[(u32, ChunkEncode)]) -> Vec<(String, PathBuf)> {
    encoded[0]
        .1
        .renditions
        .iter()
        .map(|r| {
            let list: Vec<(u32, &_)> = encoded
                .iter()
                .map(|(i, e)| (*i, e.rendition(&r.name).unwrap()))
                .collect();
            let playlist = dir.join("hls").join(&r.name).join("index.m3u8");
            std::fs::write(&playlist, media_playlist(&list)).unwrap();
            (r.name.clone(), playlist)
        })
        .collect()
}
