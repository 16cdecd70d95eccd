//! The logger on PostgreSQL, against a real server from Debian's packages started by the
//! test (testkit::Postgres): log, query and follow; two logger servers sharing one
//! database under load with one killed; `logger_query --db postgres://…`. Without
//! PostgreSQL installed these tests say why and skip, except under `.ci/run`, which
//! requires it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers fail the test on the spot.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use assert_cmd::cargo::cargo_bin;
use grpc_suite::logger as pb;
use logger_service::Config;
use pb::logger_service_client::LoggerServiceClient;
use testkit::{InProcessServer, Postgres, ServerProcess, TIMEOUT};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn start(url: &str) -> InProcessServer {
    let config = Config {
        postgres_url: Some(url.to_owned()),
        ..Config::default()
    };
    let store = logger_service::open(&config)
        .await
        .expect("opening the database");
    InProcessServer::start(move |listener, shutdown| async move {
        logger_service::serve(listener, store, &config, shutdown).await
    })
    .await
}

fn event(event_type: &str, details: &str, event_id: &str) -> pb::LogRequest {
    pb::LogRequest {
        event_type: event_type.to_owned(),
        details: details.to_owned(),
        event_id: event_id.to_owned(),
        ..Default::default()
    }
}

async fn log(
    client: &mut LoggerServiceClient<Channel>,
    request: pb::LogRequest,
) -> Result<(), tonic::Status> {
    let reply = tokio::time::timeout(TIMEOUT, client.log_activity(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded("test timeout"))??;
    assert!(reply.into_inner().logged);
    Ok(())
}

async fn query(
    client: &mut LoggerServiceClient<Channel>,
    limit: i32,
    event_type: &str,
) -> Vec<String> {
    let request = pb::LogQueryRequest {
        limit,
        event_type: event_type.to_owned(),
    };
    tokio::time::timeout(TIMEOUT, client.query_logs(request))
        .await
        .expect("in time")
        .expect("query")
        .into_inner()
        .logs
        .into_iter()
        .map(|entry| entry.details)
        .collect()
}

async fn health(channel: Channel) -> ServingStatus {
    tokio::time::timeout(
        TIMEOUT,
        HealthClient::new(channel).check(HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("in time")
    .expect("answered")
    .into_inner()
    .status()
}

/// Log (a repeated event id stored once), query with a filter, follow (backlog then new
/// rows) on PostgreSQL; when the database goes away, logging answers UNAVAILABLE and
/// health says NOT_SERVING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_query_follow_on_postgres() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let server = start(&postgres.url()).await;
    let mut client = LoggerServiceClient::new(server.channel().await);
    for n in 1..=4 {
        log(
            &mut client,
            event("WATCHED", &format!("old {n}"), &format!("w{n}")),
        )
        .await
        .expect("logged");
        log(&mut client, event("OTHER", &format!("noise {n}"), ""))
            .await
            .expect("logged");
    }
    // The same event id again: acknowledged, not stored twice.
    log(&mut client, event("WATCHED", "old 1 again", "w1"))
        .await
        .expect("a duplicate is acknowledged");
    assert_eq!(
        query(&mut client, 10, "WATCHED").await,
        ["old 4", "old 3", "old 2", "old 1"]
    );
    assert_eq!(
        query(&mut client, 3, "").await,
        ["noise 4", "old 4", "noise 3"]
    );
    assert_eq!(
        postgres.psql("SELECT count(*) FROM logs").trim(),
        "8",
        "the table the contract names, one row per event"
    );

    let mut stream = client
        .follow_logs(pb::LogFollowRequest {
            backlog: 2,
            event_type: "WATCHED".into(),
        })
        .await
        .expect("follow")
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(TIMEOUT, stream.message())
            .await
            .expect("a row in time")
            .expect("stream ok")
            .expect("a row")
    };
    assert_eq!(next().await.details, "old 3");
    let old_4 = next().await;
    assert_eq!(old_4.details, "old 4");
    let mut writer = client.clone();
    log(&mut writer, event("OTHER", "more noise", ""))
        .await
        .expect("logged");
    log(&mut writer, event("WATCHED", "new 1", ""))
        .await
        .expect("logged");
    let row = next().await;
    assert_eq!(row.details, "new 1");
    // Ids grow in commit order; a duplicate may leave a gap (its claimed id is unused).
    assert!(row.id > old_4.id + 1, "{} after {}", row.id, old_4.id);

    assert_eq!(health(server.channel().await).await, ServingStatus::Serving);
    drop(postgres);
    let error = log(&mut client, event("LOST", "no database", ""))
        .await
        .expect_err("nothing can be stored");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert_eq!(
        health(server.channel().await).await,
        ServingStatus::NotServing
    );
    server.stop().await.expect("clean stop");
}

/// Two logger servers share one database while 64 writers log through both; one server is
/// killed with `kill -9` midway and its writers retry on the other with the same event id.
/// Every acknowledged event is stored exactly once (re-sent duplicates included), a
/// follower on the surviving server saw every row in id order, rows written through the
/// other server included, and `logger_query --db postgres://…` reads the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_database_and_survive_kill_9() {
    const WRITERS: usize = 64;
    const PER_WRITER: usize = 20;
    const TOTAL: usize = WRITERS * PER_WRITER;
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let url = postgres.create_database("audit");
    let a = ServerProcess::start(cargo_bin("logger_server"), &["--db", &url]).expect("A starts");
    let b = ServerProcess::start(cargo_bin("logger_server"), &["--db", &url]).expect("B starts");
    let a_client = LoggerServiceClient::new(grpc_suite::cli::connect(&a.url()).await.expect("A"));
    let b_client = LoggerServiceClient::new(grpc_suite::cli::connect(&b.url()).await.expect("B"));

    // A follower on A, from before the first write.
    let mut stream = a_client
        .clone()
        .follow_logs(pb::LogFollowRequest {
            backlog: 0,
            event_type: String::new(),
        })
        .await
        .expect("follow")
        .into_inner();
    let followed = tokio::spawn(async move {
        let mut rows = Vec::new();
        while rows.len() < TOTAL {
            match tokio::time::timeout(TIMEOUT, stream.message()).await {
                Ok(Ok(Some(entry))) => rows.push((entry.id, entry.details)),
                other => panic!(
                    "follow stream ended early after {} rows: {other:?}",
                    rows.len()
                ),
            }
        }
        rows
    });

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (mut a_client, mut b_client) = (a_client.clone(), b_client.clone());
        let acknowledged = Arc::clone(&acknowledged);
        writers.push(tokio::spawn(async move {
            for n in 0..PER_WRITER {
                let details = format!("writer {writer} event {n}");
                let request = event("LOAD", &details, &details);
                // Odd writers go through B until it dies, then retry (same id) on A.
                let through_b =
                    writer % 2 == 1 && log(&mut b_client, request.clone()).await.is_ok();
                if !through_b {
                    log(&mut a_client, request).await.expect("A stores it");
                }
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while acknowledged.load(Ordering::Relaxed) < TOTAL / 3 {
        assert!(tokio::time::Instant::now() < deadline, "writers stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.kill();
    for writer in writers {
        writer.await.expect("writer");
    }
    // A client that retries after a lost answer sends what was already stored.
    let mut a_writer = a_client.clone();
    for n in 0..PER_WRITER {
        let details = format!("writer 1 event {n}");
        log(&mut a_writer, event("LOAD", &details, &details))
            .await
            .expect("duplicate acknowledged");
    }

    let stored = postgres.psql_on("audit", "SELECT details FROM logs ORDER BY id");
    let stored: Vec<&str> = stored.lines().collect();
    assert_eq!(stored.len(), TOTAL, "each acknowledged event stored once");
    let expected: BTreeSet<String> = (0..WRITERS)
        .flat_map(|writer| (0..PER_WRITER).map(move |n| format!("writer {writer} event {n}")))
        .collect();
    assert_eq!(
        stored
            .iter()
            .map(|details| (*details).to_owned())
            .collect::<BTreeSet<_>>(),
        expected
    );

    let followed = followed.await.expect("follower");
    assert!(
        followed.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "the follower sees rows in id order"
    );
    assert_eq!(
        followed
            .iter()
            .map(|(_, details)| details.as_str())
            .collect::<Vec<_>>(),
        stored,
        "the follower on A sees every row, those written through B included"
    );

    let output = assert_cmd::Command::new(cargo_bin("logger_query"))
        .args(["--db", &url, "--limit", "3", "--type", "LOAD"])
        .timeout(TIMEOUT)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8(output).expect("utf-8");
    assert!(table.contains(stored[TOTAL - 1]), "{table}");
    assert!(
        !table.contains(stored[TOTAL - 4]),
        "only the newest 3: {table}"
    );
    a.stop(TIMEOUT).expect("A stops");
}

/// `logger_query` on a PostgreSQL database without the table says so, and creates nothing.
#[test]
fn logger_query_on_an_empty_database() {
    let Some(postgres) = Postgres::start() else {
        return;
    };
    let url = postgres.create_database("empty");
    let assert = assert_cmd::Command::new(cargo_bin("logger_query"))
        .args(["--db", &url])
        .timeout(TIMEOUT)
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&assert.get_output().stderr).into_owned();
    assert!(stderr.contains("has no logs table"), "{stderr}");
    assert_eq!(
        postgres
            .psql_on(
                "empty",
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
            )
            .trim(),
        "0"
    );
}
