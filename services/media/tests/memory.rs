//! Reading packets must not leak them: ffmpeg-next's `Packet::read` overwrites a reused packet
//! without releasing it, which once leaked the whole file on every probe, transcode and chunk
//! check (1.1 GiB in the gateway after 5000 chunks). Alone in its binary, so that the process's
//! memory is this test's.

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn probing_and_checking_chunks_again_and_again_keeps_memory_flat() {
    let src = vtx_testkit::media("bikes.mp4"); // 0.5 MB
    let dir = tempfile::tempdir().unwrap();
    let chunks = vtx_media::cut_chunks(&src, dir.path(), 2.0, vtx_media::Deadline::none()).unwrap();
    let limits = vtx_media::Limits::default();
    let deadline = vtx_media::Deadline::none();
    // Warm up allocator pools and FFmpeg's lazily built tables.
    for _ in 0..20 {
        vtx_media::probe(&src, &limits, deadline).unwrap();
    }
    let before = rss_kib();
    for i in 0..200 {
        vtx_media::probe(&src, &limits, deadline).unwrap();
        vtx_media::inspect_chunk(&chunks[i % chunks.len()].path, &limits, deadline).unwrap();
        vtx_media::prefetch_bytes(&src, 3.0).unwrap();
    }
    let grown = rss_kib().saturating_sub(before);
    // A leak of the file per probe alone would be ~100 MiB here.
    assert!(grown < 16 * 1024, "memory grew by {grown} KiB");
}
