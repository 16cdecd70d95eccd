//! Two auth servers sharing sessions in PostgreSQL (`--sessions-db`), against a real server
//! from Debian's packages started by the test (testkit::Postgres). Without PostgreSQL
//! installed the test says why and skips, except under `.ci/run`, which requires it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{collections::BTreeMap, time::Duration};

use assert_cmd::cargo::cargo_bin;
use grpc_suite::{auth as pb, logger as log_pb};
use pb::auth_service_client::AuthServiceClient;
use testkit::{InProcessServer, Postgres, ServerProcess, TIMEOUT};
use tonic::transport::Channel;

async fn auth_client(server: &ServerProcess) -> AuthServiceClient<Channel> {
    AuthServiceClient::new(
        grpc_suite::cli::connect(&server.url())
            .await
            .expect("connect"),
    )
}

async fn login(client: &mut AuthServiceClient<Channel>, password: &str) -> pb::AuthResponse {
    let request = pb::LoginRequest {
        username: "user1".into(),
        password: password.into(),
    };
    tokio::time::timeout(TIMEOUT, client.login(request))
        .await
        .expect("in time")
        .expect("answered")
        .into_inner()
}

async fn valid(client: &mut AuthServiceClient<Channel>, session_id: &str) -> bool {
    let request = pb::ValidateSessionRequest {
        session_id: session_id.into(),
    };
    let reply = tokio::time::timeout(TIMEOUT, client.validate_session(request))
        .await
        .expect("in time")
        .expect("answered")
        .into_inner();
    if reply.valid {
        assert_eq!(reply.username, "user1");
    }
    reply.valid
}

async fn logout(client: &mut AuthServiceClient<Channel>, session_id: &str) -> bool {
    let request = pb::LogoutRequest {
        session_id: session_id.into(),
    };
    tokio::time::timeout(TIMEOUT, client.logout(request))
        .await
        .expect("in time")
        .expect("answered")
        .into_inner()
        .success
}

/// The logger's rows counted by event type, once `expected` many have arrived (at once
/// for 0).
async fn logged_types(logger: &InProcessServer, expected: usize) -> BTreeMap<String, usize> {
    let mut client =
        log_pb::logger_service_client::LoggerServiceClient::new(logger.channel().await);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let logs = client
            .query_logs(log_pb::LogQueryRequest {
                limit: 1000,
                event_type: String::new(),
            })
            .await
            .expect("query")
            .into_inner()
            .logs;
        if logs.len() >= expected || tokio::time::Instant::now() > deadline {
            let mut counts = BTreeMap::new();
            for entry in logs {
                *counts.entry(entry.event_type).or_insert(0) += 1;
            }
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A login on replica A is validated and ended on replica B; a session made on A stays
/// valid on B after A is killed with `kill -9`; every audit event, from both replicas
/// (those A had not delivered when it died included), reaches the logger exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_sessions_and_deliver_each_event_once() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let url = postgres.create_database("sessions");
    let dir = tempfile::tempdir().expect("tempdir");
    let logger_config = logger_service::Config {
        db_path: dir.path().join("logs.db"),
        ..logger_service::Config::default()
    };
    let store = logger_service::open_store(&logger_config).expect("log database");
    let logger = InProcessServer::start(move |listener, shutdown| async move {
        logger_service::serve(listener, store, &logger_config, shutdown).await
    })
    .await;
    let args = ["--sessions-db", &url, "--logger-addr", &logger.url()];
    let a = ServerProcess::start(cargo_bin("auth_server"), &args).expect("A starts");
    let b = ServerProcess::start(cargo_bin("auth_server"), &args).expect("B starts");
    let (mut on_a, mut on_b) = (auth_client(&a).await, auth_client(&b).await);

    assert!(!login(&mut on_a, "wrong").await.success);
    assert!(!login(&mut on_b, "wrong").await.success);
    let first = login(&mut on_a, "pass123").await;
    assert!(first.success, "{first:?}");
    assert!(
        valid(&mut on_b, &first.session_id).await,
        "A's session is valid on B"
    );
    assert!(
        logout(&mut on_b, &first.session_id).await,
        "B ends A's session"
    );
    assert!(
        !valid(&mut on_a, &first.session_id).await,
        "ended for A too"
    );
    assert!(!logout(&mut on_a, &first.session_id).await, "ended once");

    let second = login(&mut on_a, "pass123").await;
    assert!(second.success);
    a.kill();
    assert!(
        valid(&mut on_b, &second.session_id).await,
        "losing A logs no one out"
    );
    assert!(logout(&mut on_b, &second.session_id).await);

    let expected = BTreeMap::from([
        ("LOGIN_FAILED".to_owned(), 2),
        ("SESSION_STARTED".to_owned(), 2),
        ("SESSION_TERMINATED".to_owned(), 2),
    ]);
    assert_eq!(logged_types(&logger, 6).await, expected);
    // Nothing more arrives later (no event delivered twice), and the outbox is empty.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(logged_types(&logger, 0).await, expected);
    assert_eq!(
        postgres
            .psql_on("sessions", "SELECT count(*) FROM auth_outbox")
            .trim(),
        "0"
    );
    b.stop(TIMEOUT).expect("B stops");
    logger.stop().await.expect("logger stops");
}
