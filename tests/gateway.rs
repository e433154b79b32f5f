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
    let foreign = Auth::new(&["some-other-deployment-token".to_string()], None).sign(&Claims {
        kind: TokenKind::Upload,
        id: up.id.as_uuid(),
        exp: i64::MAX,
        sub: None,
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
    let auth = Auth::new(&[app.cfg.auth.service_tokens[0].expose().to_string()], None);
    let past = chrono::Utc::now().timestamp() - 1;
    for kind in [TokenKind::Grant, TokenKind::Upload] {
        let expired = auth.sign(&Claims {
            kind,
            id: up.id.as_uuid(),
            exp: past,
            sub: None,
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
        })
        .await
        .unwrap_err();
    assert_eq!(
        failure(err),
        (StatusCode::BAD_REQUEST, "invalid-ttl".to_string())
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
