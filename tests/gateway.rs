//! The upload gateway's edges: credentials, chunk checks, tus.

use reqwest::StatusCode;
use sqlx::PgPool;
use vtx_client::{ApiFailure, Client};
use vtx_domain::api::GrantRequest;
use vtx_gateway::{Auth, Claims, TokenKind};
use vtx_tests::TestApp;

fn failure(e: anyhow::Error) -> (StatusCode, String) {
    let f = e.downcast::<ApiFailure>().expect("an API error response");
    (f.status, f.code)
}

fn unauthorized(code: &str) -> (StatusCode, String) {
    (StatusCode::UNAUTHORIZED, code.to_string())
}

/// Frames of a clip, from its packets.
fn frames_of(clip: &std::path::Path) -> u64 {
    vtx_media::probe(
        clip,
        &vtx_media::Limits::default(),
        vtx_media::Deadline::none(),
    )
    .unwrap()
    .video
    .frames
}

fn forbidden() -> (StatusCode, String) {
    (StatusCode::FORBIDDEN, "auth-scope".to_string())
}

#[sqlx::test(migrations = "../migrations")]
async fn calls_without_valid_credentials_get_401_with_a_clear_code(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let service = &app.client;
    let anonymous = Client::new(service.base());
    let up = service.create_upload().await.unwrap();
    let video = vtx_domain::VideoId::new();

    // No credentials at all.
    assert_eq!(
        failure(anonymous.create_upload().await.unwrap_err()),
        unauthorized("auth-missing")
    );
    assert_eq!(
        failure(anonymous.upload(up.id).await.unwrap_err()),
        unauthorized("auth-missing")
    );
    assert_eq!(
        failure(anonymous.video(video).await.unwrap_err()),
        unauthorized("auth-missing")
    );
    assert_eq!(
        failure(anonymous.grant(&GrantRequest::default()).await.unwrap_err()),
        unauthorized("auth-missing")
    );

    // Wrong credentials: a made-up token, a token signed with another key.
    let wrong = anonymous.with_token("not-a-token-at-all");
    assert_eq!(
        failure(wrong.create_upload().await.unwrap_err()),
        unauthorized("auth-invalid")
    );
    let foreign = Auth::new(&["some-other-deployment-token".to_string()], &[]).sign(&Claims {
        kind: TokenKind::Upload,
        id: up.id.as_uuid(),
        exp: i64::MAX,
        sub: None,
        followers: None,
    });
    assert_eq!(
        failure(
            anonymous
                .with_token(foreign)
                .upload(up.id)
                .await
                .unwrap_err()
        ),
        unauthorized("auth-invalid")
    );

    // Expired: a grant and an upload token signed with this deployment's key, but past due.
    let auth = Auth::new(&[app.cfg.auth.service_tokens[0].expose().to_string()], &[]);
    let past = chrono::Utc::now().timestamp() - 1;
    for kind in [TokenKind::Grant, TokenKind::Upload] {
        let expired = auth.sign(&Claims {
            kind,
            id: up.id.as_uuid(),
            exp: past,
            sub: None,
            followers: None,
        });
        let err = anonymous
            .with_token(expired)
            .upload(up.id)
            .await
            .unwrap_err();
        assert_eq!(failure(err), unauthorized("auth-expired"));
    }
    // Nothing was created by any refused call.
    let uploads: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(uploads, 1);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_app_uploads_with_a_grant_and_its_session_token_only(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let service = &app.client;
    let grant = service
        .grant(&GrantRequest {
            sub: Some("user-42".into()),
            ttl_secs: Some(600),
            followers: Some(250_000),
        })
        .await
        .unwrap();
    let app_client = Client::new(service.base()).with_token(grant.token.as_str());

    // The grant opens a session and gets a token bound to it.
    let up = app_client.create_upload().await.unwrap();
    let session = Client::new(service.base()).with_token(up.upload_token.as_str());
    let chunk = vtx_tests::ts_chunks(&vtx_tests::media("bikes.mp4"), 2.0).remove(0);
    let (status, _) = session.put_chunk(up.id, 0, chunk).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(session.upload(up.id).await.unwrap().chunks.len(), 1);
    // The grant that opened the session may use it too (tus clients send one header).
    assert_eq!(app_client.upload(up.id).await.unwrap().chunks.len(), 1);

    // Neither reaches anything else.
    let other = service.create_upload().await.unwrap();
    assert_eq!(
        failure(session.upload(other.id).await.unwrap_err()),
        forbidden()
    );
    assert_eq!(
        failure(app_client.upload(other.id).await.unwrap_err()),
        forbidden()
    );
    assert_eq!(
        failure(session.create_upload().await.unwrap_err()),
        forbidden()
    );
    assert_eq!(
        failure(
            app_client
                .video(vtx_domain::VideoId::new())
                .await
                .unwrap_err()
        ),
        forbidden()
    );
    assert_eq!(
        failure(
            app_client
                .grant(&GrantRequest::default())
                .await
                .unwrap_err()
        ),
        forbidden()
    );
    // Grants are bounded.
    let err = service
        .grant(&GrantRequest {
            sub: None,
            ttl_secs: Some(10 * 24 * 3600),
            followers: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        failure(err),
        (StatusCode::BAD_REQUEST, "invalid-ttl".to_string())
    );
    // A follower count comes from the grant the service signed, never from the app itself.
    let claim = vtx_domain::api::CreateUpload {
        rotation: None,
        followers: Some(10_000_000),
        signed_playback: None,
    };
    assert_eq!(
        failure(app_client.create_upload_with(&claim).await.unwrap_err()),
        forbidden()
    );
    let followers: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT followers FROM uploads ORDER BY created_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        followers,
        vec![Some(250_000), None],
        "the grant's count, signed"
    );
    // The grant id is recorded on the session it opened, and only there.
    let grants: Vec<Option<uuid::Uuid>> =
        sqlx::query_scalar("SELECT grant_id FROM uploads ORDER BY created_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert!(grants[0].is_some() && grants[1].is_none(), "{grants:?}");
    app.stop().await;
}

/// tuspy, from the virtualenv deploy/local/setup.sh makes (off the test's runtime, which also
/// serves the gateway).
async fn tuspy(args: &[&str]) -> (String, u64) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || tuspy_blocking(&args))
        .await
        .unwrap()
}

fn tuspy_blocking(args: &[String]) -> (String, u64) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".vtx/py/bin/python");
    assert!(
        python.exists(),
        "tuspy missing: run deploy/local/setup.sh (it installs tuspy into .vtx/py)"
    );
    let out = std::process::Command::new(python)
        .arg(root.join("tests/tus/upload.py"))
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "tuspy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let url = lines.next().expect("upload URL").to_string();
    let offset = lines
        .next()
        .expect("offset")
        .parse()
        .expect("offset number");
    (url, offset)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_tus_upload_from_a_real_tus_client_resumes_and_becomes_a_playable_video(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let clip = vtx_tests::media("bikes.mp4");
    let size = std::fs::metadata(&clip).unwrap().len();
    let source_frames = frames_of(&clip);
    // An app's credentials: a grant from an internal service.
    let grant = app
        .client
        .grant(&GrantRequest::default())
        .await
        .unwrap()
        .token;
    let endpoint = format!("{}/v1/tus/", app.client.base());
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tus-urls.json");
    let (clip_s, store_s) = (clip.to_str().unwrap(), store.to_str().unwrap());

    // The client stops half-way (killed), then a second run resumes from the server's offset.
    // It stops on a part boundary (256 KiB, tuspy's part here): a part but the last may not be
    // smaller than VTX_TUS_MIN_PART_BYTES (256 KiB).
    let half = ((size / 2).div_ceil(256 * 1024) * 256 * 1024).to_string();
    let (url, offset) = tuspy(&[&endpoint, &grant, clip_s, store_s, &half]).await;
    assert!(offset >= size / 2 && offset < size, "{offset} of {size}");
    let (url_again, offset) = tuspy(&[&endpoint, &grant, clip_s, store_s]).await;
    assert_eq!(url_again, url, "the second run resumed the same upload");
    assert_eq!(offset, size);

    let id: vtx_domain::UploadId = url.rsplit('/').next().unwrap().parse().unwrap();
    let view = Client::new(app.client.base())
        .with_token(grant.as_str())
        .upload(id)
        .await
        .unwrap();
    assert_eq!((view.state.as_str(), view.bytes), ("completed", size));
    let video = app
        .client
        .wait_for_video(view.video_id.unwrap(), std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(video.frames, Some(source_frames));
    // The tus metadata asked for signed playback.
    let hls = video.playback.unwrap().hls.unwrap();
    assert!(hls.contains("/v1/media/s/"), "{hls}");
    app.stop().await;
}

/// A raw tus request with the app's grant.
fn tus(
    c: &Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    headers: &[(&str, String)],
) -> reqwest::RequestBuilder {
    let mut req = c.http().request(method, url).bearer_auth(token);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[sqlx::test(migrations = "../migrations")]
async fn tus_follows_the_protocol_at_its_edges(pool: PgPool) {
    use reqwest::Method;
    // Parts of at least 100 bytes (but the last), so this small upload can be sent in a few.
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_TUS_MIN_PART_BYTES", "100")],
        vtx_tests::Services::default(),
    )
    .await;
    let c = &app.client;
    let token = c.grant(&GrantRequest::default()).await.unwrap().token;
    let endpoint = format!("{}/v1/tus/", c.base());
    let v = ("Tus-Resumable", "1.0.0".to_string());

    // Discovery needs neither credentials nor the version header.
    let resp = c
        .http()
        .request(Method::OPTIONS, &endpoint)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "tus-version"), "1.0.0");
    for ext in ["creation", "checksum", "termination", "expiration"] {
        assert!(header(&resp, "tus-extension").contains(ext));
    }
    assert!(header(&resp, "tus-checksum-algorithm").contains("sha1"));
    assert_eq!(
        header(&resp, "tus-max-size"),
        app.cfg.uploads.max_upload_bytes.to_string()
    );

    // Creation: version, credentials and size are checked.
    let len = ("Upload-Length", "1000".to_string());
    let resp = tus(
        c,
        Method::POST,
        &endpoint,
        &token,
        std::slice::from_ref(&len),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::PRECONDITION_FAILED);
    let resp = c
        .http()
        .post(&endpoint)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let too_big = (
        "Upload-Length",
        (app.cfg.uploads.max_upload_bytes + 1).to_string(),
    );
    let resp = tus(c, Method::POST, &endpoint, &token, &[v.clone(), too_big])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let junk: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let resp = tus(
        c,
        Method::POST,
        &endpoint,
        &token,
        &[v.clone(), len.clone()],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "tus-resumable"), "1.0.0");
    assert!(header(&resp, "upload-expires").ends_with("GMT"));
    let url = header(&resp, "location");
    let octets = (
        "Content-Type",
        "application/offset+octet-stream".to_string(),
    );
    let at = |n: usize| ("Upload-Offset", n.to_string());

    // A wrong offset is a conflict; a wrong checksum is 460 and stores nothing; a wrong
    // content type is 415.
    let resp = tus(
        c,
        Method::PATCH,
        &url,
        &token,
        &[v.clone(), octets.clone(), at(10)],
    )
    .body(junk[..100].to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let bad_sum = (
        "Upload-Checksum",
        "sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=".to_string(),
    );
    let resp = tus(
        c,
        Method::PATCH,
        &url,
        &token,
        &[v.clone(), octets.clone(), at(0), bad_sum],
    )
    .body(junk[..100].to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 460);
    let resp = tus(c, Method::PATCH, &url, &token, &[v.clone(), at(0)])
        .body(junk[..100].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A part under the floor (not the last) is refused before a byte is stored.
    let resp = tus(
        c,
        Method::PATCH,
        &url,
        &token,
        &[v.clone(), octets.clone(), at(0)],
    )
    .body(junk[..50].to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["error"]["code"],
        "tus-part-too-small"
    );
    let resp = tus(c, Method::HEAD, &url, &token, std::slice::from_ref(&v))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-offset"), "0");
    assert_eq!(header(&resp, "upload-length"), "1000");
    assert_eq!(header(&resp, "cache-control"), "no-store");

    // Parts with a good checksum move the offset; past the length is refused.
    use base64::Engine;
    use sha1::Digest;
    let sum = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(&junk[..600]));
    let resp = tus(
        c,
        Method::PATCH,
        &url,
        &token,
        &[
            v.clone(),
            octets.clone(),
            at(0),
            ("Upload-Checksum", format!("sha1 {sum}")),
        ],
    )
    .body(junk[..600].to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "upload-offset"), "600");
    let resp = tus(
        c,
        Method::PATCH,
        &url,
        &token,
        &[v.clone(), octets.clone(), at(600)],
    )
    .body(vec![0u8; 500])
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The last part finishes the upload: the bytes are not a video, so its job fails with a
    // clear code.
    let resp = tus(
        c,
        Method::PATCH,
        &url,
        &token,
        &[v.clone(), octets.clone(), at(600)],
    )
    .body(junk[600..].to_vec())
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let video: vtx_domain::VideoId = header(&resp, "vtx-video-id").parse().unwrap();
    let done = c
        .wait_for_video(video, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(done.state, "failed");
    assert_eq!(done.error.unwrap().code, "not-a-video");

    // Termination: a second upload is deleted, and then gone.
    let resp = tus(c, Method::POST, &endpoint, &token, &[v.clone(), len])
        .send()
        .await
        .unwrap();
    let url = header(&resp, "location");
    let resp = tus(c, Method::DELETE, &url, &token, std::slice::from_ref(&v))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = tus(c, Method::HEAD, &url, &token, &[v])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_killed_client_upload_resumes_and_sends_only_what_is_missing(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let clip = vtx_tests::media("bikes.mp4"); // 10 s: five 2 s chunks
    let state = tempfile::tempdir().unwrap();
    let opts = vtx_client::UploadOptions {
        chunk_seconds: 2.0,
        concurrency: 2,
        live: true, // paced at the video's rate, so it can be killed part-way
        state_dir: Some(state.path().to_path_buf()),
        followers: None,
        signed_playback: false,
    };
    // Killed once the first chunk is acknowledged.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let first = {
        let (client, clip, opts) = (app.client.clone(), clip.clone(), opts.clone());
        tokio::spawn(async move {
            let progress = move |sent: u64, _total: u64| {
                if sent > 0 {
                    let _ = tx.send(());
                }
            };
            client.upload_file(&clip, &opts, &progress).await
        })
    };
    rx.recv().await.expect("a chunk was stored");
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    // The state file holds the session's upload token: its owner's alone.
    {
        use std::os::unix::fs::PermissionsExt;
        let file = std::fs::read_dir(state.path())
            .unwrap()
            .next()
            .expect("a state file")
            .unwrap();
        let mode = file.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "state file mode {mode:o}");
    }

    let again = vtx_client::UploadOptions {
        live: false,
        ..opts
    };
    let report = app
        .client
        .upload_video(&clip, &again, &|_, _| {})
        .await
        .unwrap();
    assert!(
        report.resumed_chunks >= 1 && report.resumed_chunks < report.chunks,
        "{report:?}"
    );
    let view = app.client.upload(report.upload_id).await.unwrap();
    assert_eq!(view.chunks.len() as u32, report.chunks);
    let uploads: i64 = sqlx::query_scalar("SELECT count(*) FROM uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(uploads, 1, "the second run continued the first session");
    assert!(
        std::fs::read_dir(state.path()).unwrap().next().is_none(),
        "the state file is removed once the upload completes"
    );
    let source_frames = frames_of(&clip);
    let video = app
        .client
        .wait_for_video(
            report.completed.video_id,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(video.frames, Some(source_frames));
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rotated_video_uploaded_in_chunks_stays_upright(pool: PgPool) {
    // MPEG-TS chunks lose the display matrix; the client declares the rotation instead.
    let app = TestApp::spawn(pool).await;
    let clip = vtx_testkit::rotated(); // 640x272 coded, shown 272x640
    let done = app
        .client
        .upload_file(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    let video = app
        .client
        .wait_for_video(done.video_id, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert!(
        video.height > video.width,
        "{:?}x{:?}",
        video.width,
        video.height
    );
    let playback = video.playback.unwrap();
    for r in &playback.mp4 {
        assert!(r.height > r.width, "{} is {}x{}", r.name, r.width, r.height);
    }
    // A rotation that is not a quarter turn is refused.
    let err = app
        .client
        .create_upload_with(&vtx_domain::api::CreateUpload {
            rotation: Some(45),
            followers: None,
            signed_playback: None,
        })
        .await
        .unwrap_err();
    assert_eq!(
        failure(err),
        (StatusCode::BAD_REQUEST, "invalid-rotation".to_string())
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn chunks_of_two_different_videos_do_not_complete(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    let bikes = vtx_tests::ts_chunks(&vtx_tests::media("bikes.mp4"), 2.0);
    let other = vtx_tests::ts_chunks(&vtx_tests::gop_bframes(), 2.0);
    c.put_chunk(up.id, 0, bikes[0].clone()).await.unwrap();
    c.put_chunk(up.id, 1, other[0].clone()).await.unwrap();
    let err = c.complete(up.id, Some(2)).await.unwrap_err();
    assert_eq!(
        failure(err),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "chunks-not-contiguous".to_string()
        )
    );
    assert_eq!(c.upload(up.id).await.unwrap().state, "open");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_file_that_cannot_be_cut_into_chunks_goes_up_whole_over_tus(pool: PgPool) {
    // VP9 does not go into MPEG-TS: the client sends the file whole, over tus.
    let app = TestApp::spawn(pool).await;
    let src = vtx_tests::media("bikes.mp4");
    let clip = vtx_tests::derived(
        "vp9-opus.mp4",
        &[
            "-i",
            src.to_str().unwrap(),
            "-t",
            "4",
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
            "-b:v",
            "400k",
            "-c:a",
            "libopus",
        ],
    );
    let report = app
        .client
        .upload_video(&clip, &Default::default(), &|_, _| {})
        .await
        .unwrap();
    let view = app.client.upload(report.upload_id).await.unwrap();
    assert_eq!(view.state, "completed");
    let protocol: String = sqlx::query_scalar("SELECT protocol FROM uploads")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(protocol, "tus");
    let video = app
        .client
        .wait_for_video(
            report.completed.video_id,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    app.stop().await;
}

/// Polls the video until `done` holds of it, for at most `secs`.
async fn video_until(
    app: &TestApp,
    id: vtx_domain::VideoId,
    secs: u64,
    what: &str,
    done: impl Fn(&vtx_domain::api::VideoView) -> bool,
) -> vtx_domain::api::VideoView {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let v = app.client.video(id).await.unwrap();
        if done(&v) {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {v:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_standard_input_is_published_at_once_as_it_is_then_replaced_by_the_ladder(pool: PgPool) {
    // No worker at first: whatever plays right after completion is the upload itself.
    let app = TestApp::spawn_with(
        pool,
        &[
            ("VTX_INSTANT_PUBLISH", "true"),
            ("VTX_SWAP_GRACE_SECS", "600"),
        ],
        vtx_tests::Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let clip = vtx_tests::gop_bframes(); // H.264 with closed GOPs of 1 s, B-frames, AAC
    let source_frames = frames_of(&clip);
    let chunks = vtx_tests::ts_chunks(&clip, 2.0);
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        c.put_chunk(up.id, i as u32, chunk.clone()).await.unwrap();
    }
    let done = c.complete(up.id, Some(chunks.len() as u32)).await.unwrap();

    // Live when the completion answers: the instant tier, every frame, the audio, a cover.
    let video = c.video(done.video_id).await.unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(video.live_tier.as_deref(), Some("instant"), "{video:?}");
    assert_eq!(video.frames, Some(source_frames));
    let playback = video.playback.clone().unwrap();
    assert!(playback.cover.is_some());
    let http = reqwest::Client::new();
    let master_url = playback.hls.expect("an HLS master");
    let master = vtx_tests::get_text(&http, &master_url).await;
    assert!(master.contains(",mp4a.40.2\""), "{master}");
    let variants: Vec<&str> = master
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    assert_eq!(variants, ["source/index.m3u8"], "{master}");
    let base = &master_url[..master_url.rfind('/').unwrap() + 1];
    let dir = tempfile::tempdir().unwrap();
    let (frames, audio) =
        vtx_tests::fetch_hls(&http, &format!("{base}{}", variants[0]), dir.path()).await;
    assert_eq!(frames, source_frames);
    assert!(audio > 0);

    // Its MP4 comes from a worker's merge class, muxed from the same segments.
    let muxer = vtx_tests::ChildGuard(app.spawn_process(
        "instant-mux",
        "worker",
        &[("VTX_WORKER_QUEUES", "merge")],
    ));
    let video = video_until(
        &app,
        done.video_id,
        60,
        "no MP4 for the instant tier",
        |v| v.playback.as_ref().is_some_and(|p| !p.mp4.is_empty()),
    )
    .await;
    assert_eq!(video.live_tier.as_deref(), Some("instant"));
    let mp4 = &video.playback.as_ref().unwrap().mp4[0];
    assert_eq!(mp4.frames, source_frames);
    let bytes = http
        .get(&mp4.url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let file = dir.path().join("instant.mp4");
    std::fs::write(&file, &bytes).unwrap();
    assert_eq!(frames_of(&file), source_frames);
    drop(muxer);

    // Then the fast ladder replaces it through the same swap as any tier.
    let _worker = vtx_tests::ChildGuard(app.spawn_worker_process("instant-ladder"));
    let video = video_until(
        &app,
        done.video_id,
        120,
        "the ladder never replaced it",
        |v| matches!(v.live_tier.as_deref(), Some("fast" | "high")),
    )
    .await;
    let master = vtx_tests::get_text(&http, video.playback.unwrap().hls.as_deref().unwrap()).await;
    assert!(
        master.matches("#EXT-X-STREAM-INF").count() > 1,
        "the ladder has several rungs: {master}"
    );
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM webhook_events WHERE video_id = $1 ORDER BY occurred_at",
    )
    .bind(done.video_id.as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    // Published once (the instant tier); every later tier is an upgrade.
    assert_eq!(
        events.first().map(String::as_str),
        Some("video.published"),
        "{events:?}"
    );
    assert!(
        events.len() >= 2 && events[1..].iter().all(|e| e == "video.upgraded"),
        "{events:?}"
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_input_above_the_instant_caps_is_not_published_early(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[
            ("VTX_INSTANT_PUBLISH", "true"),
            // The clip's ~1 Mb/s is over this cap: it is a high bitrate here.
            ("VTX_INSTANT_MAX_BITRATE", "200000"),
        ],
        vtx_tests::Services {
            worker: false,
            scheduler: true,
        },
    )
    .await;
    let chunks = vtx_tests::ts_chunks(&vtx_tests::gop_bframes(), 2.0);
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        c.put_chunk(up.id, i as u32, chunk.clone()).await.unwrap();
    }
    let done = c.complete(up.id, Some(chunks.len() as u32)).await.unwrap();
    let video = c.video(done.video_id).await.unwrap();
    assert_eq!(video.state, "processing", "{video:?}");
    assert_eq!(video.live_tier, None);
    let remuxed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM upload_chunks WHERE upload_id = $1 AND instant <> 'false'::jsonb",
    )
    .bind(up.id.as_uuid())
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(remuxed, 0);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn chunks_are_transcoded_while_the_upload_arrives(pool: PgPool) {
    // A long grace keeps the fast tier's objects fetchable after the high tier replaces it.
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_SWAP_GRACE_SECS", "600")],
        vtx_tests::Services::default(),
    )
    .await;
    let clip = vtx_tests::gop_bframes(); // keyframe every second, B-frames, AAC
    let source_frames = frames_of(&clip);
    let chunks = vtx_tests::ts_chunks(&clip, 2.0);
    let n = chunks.len() as i64;
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    // Out of order; each chunk is encoded as soon as it is stored.
    for (i, chunk) in chunks.iter().enumerate().rev() {
        c.put_chunk(up.id, i as u32, chunk.clone()).await.unwrap();
    }
    let encoded = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM upload_chunks WHERE upload_id = $1 AND encode_state = 'done'",
        )
        .bind(up.id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while encoded().await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "chunks not encoded before completion"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // Completing only publishes: the fast tier is the chunks' encodes.
    let done = c.complete(up.id, Some(n as u32)).await.unwrap();
    let video = c
        .wait_for_video(done.video_id, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(video.frames, Some(source_frames));
    let job = c.job(done.job_id).await.unwrap();
    let fast = &job.tiers[0];
    assert_eq!(
        (fast.tier.as_str(), fast.slices_total),
        ("fast", n as u32),
        "{job:?}"
    );
    let live_ingest: bool = sqlx::query_scalar("SELECT live_ingest FROM jobs WHERE id = $1")
        .bind(done.job_id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(live_ingest);

    // The fast tier plays as one stream: every frame, the audio, time always moving on.
    let playback = video.playback.clone().unwrap();
    let master_url = playback.hls.expect("an HLS master");
    let http = reqwest::Client::new();
    let master = vtx_tests::get_text(&http, &master_url).await;
    assert!(master.contains("CODECS=\"avc1."), "{master}");
    assert!(master.contains(",mp4a.40.2\""), "{master}");
    let variant = master
        .lines()
        .find(|l| !l.starts_with('#') && !l.is_empty())
        .unwrap();
    let base = &master_url[..master_url.rfind('/').unwrap() + 1];
    let dir = tempfile::tempdir().unwrap();
    let (frames, audio) =
        vtx_tests::fetch_hls(&http, &format!("{base}{variant}"), dir.path()).await;
    assert_eq!(frames, source_frames);
    assert!(audio > 0);
    assert!(playback.cover.is_some());

    // Its MP4s follow in the background, muxed from the segments.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let fast_mp4 = loop {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, frames FROM renditions WHERE job_id = $1 AND tier = 'fast' AND container = 'mp4'",
        )
        .bind(done.job_id.as_uuid())
        .fetch_all(&app.pool)
        .await
        .unwrap();
        let hls: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM renditions WHERE job_id = $1 AND tier = 'fast' AND container = 'hls'",
        )
        .bind(done.job_id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
        if hls > 0 && rows.len() as i64 == hls {
            break rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no MP4s for the fast tier: {rows:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        fast_mp4.iter().all(|(_, f)| *f as u64 == source_frames),
        "{fast_mp4:?}"
    );

    // The high tier follows on the source assembled from the chunks, with MP4s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let high = loop {
        let v = c.video(done.video_id).await.unwrap();
        if v.live_tier.as_deref() == Some("high") {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "high tier never went live: {v:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let mp4 = high.playback.unwrap().mp4;
    assert!(!mp4.is_empty());
    assert!(mp4.iter().all(|r| r.frames == source_frames), "{mp4:?}");
    app.stop().await;
}

/// PUTs `data` as chunk `index` of `upload`, `per_second` bytes each second, then (when
/// `stall_after` is set) nothing more after that many bytes: (status, error code).
async fn put_slowly(
    app: &TestApp,
    upload: vtx_domain::UploadId,
    index: u32,
    data: bytes::Bytes,
    per_second: usize,
    stall_after: Option<usize>,
) -> (StatusCode, String) {
    let len = data.len();
    let parts: Vec<bytes::Bytes> = (0..len)
        .step_by(per_second)
        .map(|at| data.slice(at..(at + per_second).min(len)))
        .collect();
    let body = futures_util::stream::unfold((parts, 0usize, 0usize), move |(parts, i, sent)| {
        async move {
            if stall_after.is_some_and(|s| sent >= s) {
                // Stalled: hold the connection open, sending nothing.
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                return None;
            }
            let part = parts.get(i)?.clone();
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let n = part.len();
            Some((Ok::<_, std::io::Error>(part), (parts, i + 1, sent + n)))
        }
    });
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/v1/uploads/{upload}/chunks/{index}",
            app.client.base()
        ))
        .bearer_auth(app.cfg.auth.service_tokens[0].expose())
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, len)
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

#[sqlx::test(migrations = "../migrations")]
async fn a_chunk_from_a_weak_link_arrives_however_slowly_and_a_stalled_one_gets_408(pool: PgPool) {
    // A weak cellular link: a real chunk at a few KB/s, for longer than a minute (longer than
    // the object store client's own read timeout). Silence for the idle time ends a body.
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_BODY_IDLE_SECS", "4")],
        vtx_tests::Services::default(),
    )
    .await;
    let chunks = vtx_tests::ts_chunks(&vtx_tests::gop_bframes(), 2.0);
    let chunk = chunks
        .iter()
        .min_by_key(|c| c.len())
        .expect("a chunk")
        .clone();
    let index = chunks.iter().position(|c| *c == chunk).unwrap() as u32;
    let up = app.client.create_upload().await.unwrap();
    let per_second = chunk.len().div_ceil(65);
    let started = std::time::Instant::now();
    let (status, code) = put_slowly(&app, up.id, index, chunk.clone(), per_second, None).await;
    assert_eq!(status, StatusCode::CREATED, "{code}");
    assert!(started.elapsed() > std::time::Duration::from_secs(60));
    assert_eq!(app.client.upload(up.id).await.unwrap().chunks.len(), 1);

    // The next chunk stops half-way and sends nothing more: 408, nothing stored.
    let other = (index as usize + 1) % chunks.len();
    let (status, code) = put_slowly(
        &app,
        up.id,
        other as u32,
        chunks[other].clone(),
        chunks[other].len() / 4,
        Some(chunks[other].len() / 2),
    )
    .await;
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::REQUEST_TIMEOUT, "body-timeout")
    );
    assert_eq!(app.client.upload(up.id).await.unwrap().chunks.len(), 1);
    let objects = app
        .store
        .list(&format!("uploads/{}/", up.id))
        .await
        .unwrap();
    assert_eq!(objects.len(), 1, "{objects:?}");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn chunks_sent_in_parallel_never_pass_the_upload_caps_together(pool: PgPool) {
    // Each chunk alone fits; all of them together hold twice the cap. Sent at once, every
    // one passes the early check, and the cap must still hold when they are recorded.
    let chunks = vtx_tests::ts_chunks(&vtx_tests::gop_bframes(), 2.0);
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    let cap = total / 2;
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_MAX_UPLOAD_BYTES", &cap.to_string())],
        vtx_tests::Services {
            worker: false,
            ..Default::default()
        },
    )
    .await;
    let up = app.client.create_upload().await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, c) in chunks.iter().enumerate() {
        let (client, c) = (app.client.clone(), c.clone());
        tasks.spawn(async move { client.put_chunk(up.id, i as u32, c).await });
    }
    let (mut stored, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok((status, _)) => {
                assert_eq!(status, StatusCode::CREATED);
                stored += 1;
            }
            Err(e) => {
                assert_eq!(
                    failure(e),
                    (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "upload-too-large".to_string()
                    )
                );
                refused += 1;
            }
        }
    }
    assert!(
        stored >= 1 && refused >= 1,
        "{stored} stored, {refused} refused"
    );
    let view = app.client.upload(up.id).await.unwrap();
    assert!(
        view.bytes <= cap as u64,
        "{} bytes stored, cap {cap}",
        view.bytes
    );
    assert_eq!(view.chunks.len(), stored);
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn chunks_past_the_encode_ahead_budget_wait_for_completion(pool: PgPool) {
    // An abandoned upload costs at most its budget of encoding: chunks past it are encoded
    // only once the upload completes, and the video still has every frame.
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_ENCODE_AHEAD_SECS", "3")],
        vtx_tests::Services::default(),
    )
    .await;
    let clip = vtx_tests::gop_bframes();
    let chunks = vtx_tests::ts_chunks(&clip, 2.0);
    assert!(chunks.len() >= 4);
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        c.put_chunk(up.id, i as u32, chunk.clone()).await.unwrap();
    }
    let states: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT encode_state FROM upload_chunks WHERE upload_id = $1 ORDER BY idx",
    )
    .bind(up.id.as_uuid())
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let deferred = states
        .iter()
        .filter(|s| s.as_deref() == Some("deferred"))
        .count();
    assert!(
        deferred >= chunks.len() - 2 && states[0].as_deref() != Some("deferred"),
        "{states:?}"
    );
    let done = c.complete(up.id, Some(chunks.len() as u32)).await.unwrap();
    let video = c
        .wait_for_video(done.video_id, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(video.frames, Some(frames_of(&clip)));
    let live_ingest: bool = sqlx::query_scalar("SELECT live_ingest FROM jobs WHERE id = $1")
        .bind(done.job_id.as_uuid())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        live_ingest,
        "the deferred chunks joined the chunks' fast tier"
    );
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn two_completions_at_once_make_one_video_and_one_source(pool: PgPool) {
    // The source is assembled with no transaction open; completing twice at once still makes
    // one video, and the loser's assembled copy is removed.
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_LIVE_INGEST", "false")],
        vtx_tests::Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let chunks = vtx_tests::ts_chunks(&vtx_tests::gop_bframes(), 2.0);
    let c = &app.client;
    let up = c.create_upload().await.unwrap();
    for (i, chunk) in chunks.iter().enumerate() {
        c.put_chunk(up.id, i as u32, chunk.clone()).await.unwrap();
    }
    let n = Some(chunks.len() as u32);
    let (a, b) = tokio::join!(c.complete(up.id, n), c.complete(up.id, n));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.video_id, a.job_id), (b.video_id, b.job_id));
    let videos: i64 = sqlx::query_scalar("SELECT count(*) FROM videos")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(videos, 1);
    // Give the loser's discard a moment, then only the winner's source is left.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let sources = app.store.list("sources/").await.unwrap();
    assert_eq!(sources.len(), 1, "{sources:?}");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn connections_are_limited_and_shutdown_waits_a_bounded_time(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_MAX_CONNECTIONS", "2"), ("VTX_SHUTDOWN_SECS", "2")],
        vtx_tests::Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let addr = app.client.base().trim_start_matches("http://").to_string();
    let health = format!("{}/healthz", app.client.base());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Two connections that send nothing take both places.
    let a = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let b = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let third = tokio::time::timeout(std::time::Duration::from_secs(2), http.get(&health).send());
    assert!(
        third.await.is_err(),
        "a third connection is not served at the limit"
    );
    drop(a);
    let served = tokio::time::timeout(std::time::Duration::from_secs(5), http.get(&health).send())
        .await
        .expect("served once a place is free")
        .unwrap();
    assert_eq!(served.status(), StatusCode::OK);
    drop(b);

    // A request whose body stalls does not hold shutdown past its deadline.
    let up = app.client.create_upload().await.unwrap();
    let chunk = vtx_tests::ts_chunks(&vtx_tests::gop_bframes(), 2.0).remove(0);
    let len = chunk.len();
    let stalled = tokio::spawn({
        let (app_url, token) = (
            app.client.base().to_string(),
            app.cfg.auth.service_tokens[0].expose().to_string(),
        );
        async move {
            let first = chunk.slice(..len / 2);
            let body = futures_util::stream::unfold(Some(first), |next| async move {
                match next {
                    Some(b) => Some((Ok::<_, std::io::Error>(b), None)),
                    // Then nothing, ever.
                    None => std::future::pending().await,
                }
            });
            let _ = reqwest::Client::new()
                .put(format!("{app_url}/v1/uploads/{}/chunks/0", up.id))
                .bearer_auth(token)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await;
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "stopped after {:?}",
        started.elapsed()
    );
    stalled.abort();
}

/// A client acting for an app user: a fresh grant from `app`'s service.
async fn user_of(app: &TestApp) -> Client {
    let grant = app
        .client
        .grant(&GrantRequest::default())
        .await
        .unwrap()
        .token;
    app.client.with_token(grant.as_str())
}

#[sqlx::test(migrations = "../migrations")]
async fn a_grant_is_limited_and_the_client_waits_as_it_is_told(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[
            ("VTX_GRANT_MAX_OPEN_UPLOADS", "2"),
            ("VTX_GRANT_UPLOADS_PER_MINUTE", "3"),
        ],
        vtx_tests::Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let user = user_of(&app).await;
    let a = user.create_upload().await.unwrap();
    let _b = user.create_upload().await.unwrap();
    // A third open session: 429 with a time to wait.
    let err = user.create_upload().await.unwrap_err();
    let f = err.downcast_ref::<ApiFailure>().unwrap();
    assert_eq!(
        (f.status, f.code.as_str()),
        (StatusCode::TOO_MANY_REQUESTS, "too-many-open-uploads")
    );
    assert!(f.retry_after.is_some(), "{f:?}");
    // One ends; a third session opens, and a fourth in the same minute is refused by rate.
    user.abort(a.id).await.unwrap();
    let c = user.create_upload().await.unwrap();
    user.abort(c.id).await.unwrap();
    let err = user.create_upload().await.unwrap_err();
    let f = err.downcast_ref::<ApiFailure>().unwrap();
    assert_eq!(f.code, "too-many-uploads");
    let wait = f.retry_after.expect("Retry-After");
    assert!(wait <= std::time::Duration::from_secs(60), "{wait:?}");
    // Bodies in flight: one at a time for this grant's uploads here; the client's parallel
    // chunks are refused with 429 and sent again after the time the server names.
    let limited = TestApp::spawn_with(
        app.pool.clone(),
        &[("VTX_GRANT_MAX_INFLIGHT_BYTES", "1")],
        vtx_tests::Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let opts = vtx_client::UploadOptions {
        concurrency: 4,
        state_dir: None,
        ..Default::default()
    };
    let report = user_of(&limited)
        .await
        .upload_video(&vtx_tests::gop_bframes(), &opts, &|_, _| {})
        .await
        .unwrap();
    assert!(report.chunks >= 4, "{report:?}");
    limited.stop().await;
    // Another user (grant) is not held up by this one.
    user_of(&app).await.create_upload().await.unwrap();
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn hostile_chunks_get_a_clear_4xx_never_a_5xx(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[],
        vtx_tests::Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let up = app.client.create_upload().await.unwrap();
    for (i, (name, file)) in vtx_testkit::recordings::hostile_corpus().iter().enumerate() {
        let bytes = bytes::Bytes::from(std::fs::read(file).unwrap());
        let resp = app
            .client
            .http()
            .put(format!(
                "{}/v1/uploads/{}/chunks/{i}",
                app.client.base(),
                up.id
            ))
            .bearer_auth(app.cfg.auth.service_tokens[0].expose())
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert!(
            status == StatusCode::CREATED || status.is_client_error(),
            "{name}: {status} {body}"
        );
        if status.is_client_error() {
            assert!(body["error"]["code"].is_string(), "{name}: {body}");
        }
    }
    app.stop().await;
}

/// Chunks are parsed in a child process (`vtx inspect-chunk`) under an address-space limit the
/// chunk cannot raise: with a budget far below one of its 4096x2304 frames, a chunk of them is
/// refused with a 422 code (the decoder's allocations fail in the child, not in the gateway);
/// with the default budget the same chunk passes.
#[tokio::test]
async fn a_chunk_is_parsed_under_a_memory_limit_it_cannot_exceed() {
    use vtx_gateway::inspect::Inspector;
    let dir = tempfile::tempdir().unwrap();
    let chunk = dir.path().join("4k.ts");
    let made = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=4096x2304:r=30",
        ])
        .args([
            "-t",
            "1",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-g",
            "30",
        ])
        .args(["-f", "mpegts"])
        .arg(&chunk)
        .status()
        .unwrap();
    assert!(made.success());
    let limits = vtx_media::Limits::default();
    let program = Some(vtx_tests::vtx_binary());
    let tight = Inspector::start(program.clone(), 2 << 20, limits.clone())
        .await
        .unwrap();
    let err = tight.inspect(&chunk, None).await.unwrap_err();
    assert_eq!(err.status, StatusCode::UNPROCESSABLE_ENTITY, "{err:?}");
    let roomy = Inspector::start(program, 512 << 20, limits).await.unwrap();
    let (info, _) = roomy.inspect(&chunk, None).await.unwrap();
    assert_eq!(info.frames, 30);
}

/// An address from a configured URL (`scheme://[user@]host:port/...`).
fn addr_of(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).expect("a URL");
    let authority = rest.split('/').next().unwrap();
    let host_port = authority.rsplit('@').next().unwrap();
    host_port.parse().expect("host:port")
}

/// TLS on every hop: the client reaches the gateway over `https://`, and the gateway, scheduler
/// and worker reach S3 over `https://` and RabbitMQ over `amqps://`, each trusting a
/// certificate the test made (local TLS endpoints in front of the real services); without
/// being told to trust it, the client refuses the gateway's certificate.
#[sqlx::test(migrations = "../migrations")]
async fn every_hop_can_run_over_tls(pool: PgPool) {
    use vtx_tests::tls::TlsFront;
    let plain = vtx_infra::Config::from_env().unwrap();
    let s3 = TlsFront::start(addr_of(&plain.s3.endpoint)).await;
    let amqp = TlsFront::start(addr_of(plain.amqp_url.expose())).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, format!("{}{}", s3.cert_pem, amqp.cert_pem)).unwrap();
    let s3_url = format!("https://{}", s3.addr);
    let amqp_url = format!("amqps://guest:guest@{}/%2f", amqp.addr);
    let app = TestApp::spawn_with(
        pool,
        &[
            ("VTX_S3_ENDPOINT", &s3_url),
            ("VTX_AMQP_URL", &amqp_url),
            ("VTX_TLS_CA_FILE", ca.to_str().unwrap()),
        ],
        vtx_tests::Services::default(),
    )
    .await;

    // Without the extra root, neither S3 nor RabbitMQ is reached.
    let untrusted = vtx_infra::broker::BrokerClient::new(
        vtx_infra::config::Secret::new(amqp_url.clone()),
        "never",
        vtx_infra::config::ExtraRoots::default(),
    );
    assert!(
        untrusted.check().await.is_err(),
        "amqps trusts only its roots"
    );
    let mut s3_cfg = app.cfg.s3.clone();
    s3_cfg.key_prefix = "never/".into();
    let untrusted = vtx_infra::ObjectStore::new(&s3_cfg, &Default::default());
    assert!(
        untrusted.ensure_bucket().await.is_err(),
        "https trusts only its roots"
    );

    let gateway = TlsFront::start(addr_of(app.client.base())).await;
    let base = format!("https://{}", gateway.addr);
    let token = app.cfg.auth.service_tokens[0].expose().to_string();
    let stranger = Client::new(&base).with_token(token.as_str());
    let err = stranger.create_upload().await.unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "an unknown certificate is refused: {err:?}"
    );

    let client = Client::trusting(&base, gateway.cert_pem.as_bytes())
        .unwrap()
        .with_token(token.as_str())
        .with_cutter(vtx_chunker::cutter());
    let opts = vtx_client::UploadOptions {
        chunk_seconds: 2.0,
        concurrency: 2,
        live: false,
        state_dir: None,
        followers: None,
        signed_playback: false,
    };
    let clip = vtx_tests::media("bikes.mp4");
    let done = client.upload_file(&clip, &opts, &|_, _| {}).await.unwrap();
    let video = client
        .wait_for_video(done.video_id, std::time::Duration::from_secs(240))
        .await
        .unwrap();
    assert_eq!(video.state, "published", "{video:?}");
    assert_eq!(video.frames, Some(frames_of(&clip)));
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn browsers_get_cors_on_playback_objects_and_on_the_api_for_configured_origins(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[("VTX_CORS_ORIGINS", "http://app.example:3000")],
        vtx_tests::Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let http = reqwest::Client::new();
    let base = app.client.base();
    let preflight = |path: &str, origin: &str, method: &str, headers: &str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}{path}"))
            .header("origin", origin)
            .header("access-control-request-method", method)
            .header("access-control-request-headers", headers)
            .send()
    };
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_ascii_lowercase())
    };

    // Playback objects: any origin may fetch them, with Range.
    let r = preflight(
        "/v1/media/videos/x/y/fast/hls/index.m3u8",
        "http://player.example",
        "GET",
        "range",
    )
    .await
    .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(
        header(&r, "access-control-allow-headers")
            .unwrap()
            .contains("range")
    );
    let r = http
        .get(format!("{base}/v1/media/videos/x/y/fast/hls/index.m3u8"))
        .header("origin", "http://player.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let exposed = header(&r, "access-control-expose-headers").unwrap();
    assert!(exposed.contains("content-range") && exposed.contains("content-length"));

    // tus and the API: the configured origin only, with the tus headers exposed.
    let r = preflight(
        "/v1/tus",
        "http://app.example:3000",
        "POST",
        "tus-resumable,upload-length,upload-metadata,authorization",
    )
    .await
    .unwrap();
    assert!(r.status().is_success());
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("http://app.example:3000")
    );
    assert!(
        header(&r, "access-control-allow-methods")
            .unwrap()
            .contains("patch")
    );
    let allowed = header(&r, "access-control-allow-headers").unwrap();
    assert!(allowed.contains("upload-length") && allowed.contains("authorization"));
    let r = preflight("/v1/tus", "http://evil.example", "POST", "tus-resumable")
        .await
        .unwrap();
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = http
        .post(format!("{base}/v1/tus"))
        .header("origin", "http://app.example:3000")
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("http://app.example:3000")
    );
    assert!(
        header(&r, "access-control-expose-headers")
            .unwrap()
            .contains("upload-offset")
    );

    // tus discovery (a plain OPTIONS) still reaches tus.
    let r = http
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/tus"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "tus-version").as_deref(), Some("1.0.0"));
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_api_keeps_to_its_openapi_description_under_generated_requests(pool: PgPool) {
    let app = TestApp::spawn_with(
        pool,
        &[],
        vtx_tests::Services {
            worker: false,
            scheduler: false,
        },
    )
    .await;
    let base = app.client.base().to_string();
    let doc: serde_json::Value = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    for path in [
        "/v1/uploads/{id}/chunks/{index}",
        "/v1/tus/{id}",
        "/v1/videos/{id}/playback",
        "/v1/webhooks/{id}/deliveries",
        "/v1/media/{key}",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is described");
    }

    // schemathesis (from PyPI) generates requests from the description: no 5xx, and every
    // response keeps to it (status, content type, headers, body schema). The raw-media bodies
    // (chunk PUT, tus POST/PATCH) are left to the upload tests: it cannot generate them.
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = root.join(".vtx/py/bin/st");
    assert!(
        st.exists(),
        "schemathesis missing: run deploy/local/setup.sh"
    );
    let token = app.cfg.auth.service_tokens[0].expose().to_string();
    let out = tokio::process::Command::new(st)
        .args([
            "run",
            &format!("{base}/v1/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--max-examples",
            "25",
            "--seed",
            "20261130",
            "--exclude-operation-id",
            "put_chunk",
            "--exclude-operation-id",
            "tus_create",
            "--exclude-operation-id",
            "tus_patch",
            "--no-color",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{text}");
    assert!(text.contains("passed"), "{text}");
    app.stop().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_video_uploaded_for_signed_playback_plays_only_from_its_signed_expiring_urls(
    pool: PgPool,
) {
    let app = TestApp::spawn(pool).await;
    let opts = vtx_client::UploadOptions {
        signed_playback: true,
        state_dir: None,
        ..Default::default()
    };
    let done = app
        .client
        .upload_video(&vtx_tests::media("bikes.mp4"), &opts, &|_, _| {})
        .await
        .unwrap();
    let video = app
        .client
        .wait_for_video(done.completed.video_id, std::time::Duration::from_secs(240))
        .await
        .unwrap();
    let hls = video.playback.unwrap().hls.unwrap();
    let base = format!("{}/v1/media/", app.client.base());

    // A poller that sends the status's ETag back gets 304 and no body (the signed URLs in it
    // are the same for a minute; crossing a minute boundary costs one more full read).
    let status_url = format!(
        "{}/v1/videos/{}",
        app.client.base(),
        done.completed.video_id
    );
    let service = app.cfg.auth.service_tokens[0].expose().to_string();
    let mut revalidated = false;
    for _ in 0..3 {
        let first = app
            .client
            .http()
            .get(&status_url)
            .bearer_auth(&service)
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[reqwest::header::ETAG].clone();
        let again = app
            .client
            .http()
            .get(&status_url)
            .bearer_auth(&service)
            .header(reqwest::header::IF_NONE_MATCH, tag.clone())
            .send()
            .await
            .unwrap();
        if again.status() == StatusCode::NOT_MODIFIED {
            assert_eq!(again.headers()[reqwest::header::ETAG], tag);
            assert!(again.bytes().await.unwrap().is_empty());
            revalidated = true;
            break;
        }
        assert_eq!(again.status(), StatusCode::OK);
    }
    assert!(
        revalidated,
        "If-None-Match with the current ETag is answered 304"
    );
    let signed = hls
        .strip_prefix(&format!("{base}s/"))
        .expect("a signed URL");
    let (token, key) = signed.split_once('/').unwrap();

    // The master, every variant and every segment play through the signed prefix (relative
    // URLs in the playlists keep it).
    let http = reqwest::Client::new();
    let master = vtx_tests::get_text(&http, &hls).await;
    let variant = master.lines().find(|l| l.ends_with(".m3u8")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let variant_url = format!("{}{variant}", &hls[..hls.rfind('/').unwrap() + 1]);
    let (frames, _) = vtx_tests::fetch_hls(&http, &variant_url, dir.path()).await;
    assert!(frames > 0);

    let code = |r: reqwest::Response| async move {
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        (status, body["error"]["code"].as_str().unwrap().to_string())
    };
    // Without the signature, with another video's or a forged one, or expired: refused.
    let plain = http.get(format!("{base}{key}")).send().await.unwrap();
    assert_eq!(
        code(plain).await,
        (StatusCode::FORBIDDEN, "playback-url-required".into())
    );
    let forged = format!("{}x", &token[..token.len() - 1]);
    let r = http
        .get(format!("{base}s/{forged}/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (StatusCode::FORBIDDEN, "playback-url-invalid".into())
    );
    let auth = Auth::new(&[app.cfg.auth.service_tokens[0].expose().to_string()], &[]);
    let expired = auth.playback_token(done.completed.video_id, chrono::Utc::now().timestamp() - 1);
    let r = http
        .get(format!("{base}s/{expired}/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (StatusCode::FORBIDDEN, "playback-url-expired".into())
    );
    let other = auth.playback_token(
        vtx_domain::VideoId::new(),
        chrono::Utc::now().timestamp() + 60,
    );
    let r = http
        .get(format!("{base}s/{other}/{key}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        code(r).await,
        (StatusCode::FORBIDDEN, "playback-url-invalid".into())
    );
    app.stop().await;
}
