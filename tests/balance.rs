#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A client given several replicas spreads its calls over them, keeps working when one
//! stops, and follows the replicas a name resolves to.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use grpc_suite::{
    auth::{
        AuthResponse, LoginRequest, LogoutRequest, ValidateSessionRequest, ValidateSessionResponse,
        auth_service_client::AuthServiceClient,
        auth_service_server::{AuthService, AuthServiceServer},
    },
    balance::{Resolver, Spread},
    cli::Connection,
    server::GrpcServer,
    tls::ClientTls,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const BOUND: Duration = Duration::from_secs(20);

/// An auth replica that answers with its own name and counts its logins.
struct Named {
    name: &'static str,
    logins: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl AuthService for Named {
    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<AuthResponse>, Status> {
        self.logins.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(AuthResponse {
            success: true,
            message: self.name.to_owned(),
            session_id: String::new(),
        }))
    }

    async fn logout(&self, _: Request<LogoutRequest>) -> Result<Response<AuthResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn validate_session(
        &self,
        _: Request<ValidateSessionRequest>,
    ) -> Result<Response<ValidateSessionResponse>, Status> {
        Ok(Response::new(ValidateSessionResponse {
            valid: true,
            username: self.name.to_owned(),
            expires_at: String::new(),
        }))
    }
}

struct Replica {
    address: SocketAddr,
    logins: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Replica {
    async fn start(name: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let logins = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let service = Named {
            name,
            logins: Arc::clone(&logins),
        };
        let task = tokio::spawn(
            GrpcServer::new()
                .grace_period(Duration::from_millis(200))
                .add_service(AuthServiceServer::new(service))
                .serve(listener, shutdown.clone()),
        );
        Self {
            address,
            logins,
            shutdown,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("stops in time")
            .expect("task")
            .expect("clean stop");
    }
}

async fn who_answers(client: &mut AuthServiceClient<Connection>) -> String {
    let request = ValidateSessionRequest {
        session_id: "s".to_owned(),
    };
    tokio::time::timeout(BOUND, client.validate_session(request))
        .await
        .expect("in time")
        .expect("answered")
        .into_inner()
        .username
}

async fn count_answers(
    client: &mut AuthServiceClient<Connection>,
    calls: usize,
) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..calls {
        *counts.entry(who_answers(client).await).or_default() += 1;
    }
    counts
}

async fn spread_client(servers: &str) -> AuthServiceClient<Connection> {
    let connection = grpc_suite::cli::connect_spread(
        servers,
        &ClientTls::default(),
        Some(Duration::from_secs(5)),
    )
    .await
    .expect("connects");
    AuthServiceClient::new(connection)
}

/// Two addresses: the calls alternate between them, the same number on each.
#[tokio::test]
async fn calls_are_spread_over_every_address() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let mut client = spread_client(&format!("{},{}", a.url(), b.url())).await;
    let counts = count_answers(&mut client, 10).await;
    assert_eq!(counts.get("a"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("b"), Some(&5), "{counts:?}");
    a.stop().await;
    b.stop().await;
}

/// One replica stopped: reads are answered by the other, and a login (not repeated once
/// it reached a server) is sent to the other when the stopped one refuses the connection,
/// made exactly once.
#[tokio::test]
async fn a_stopped_replica_is_skipped() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let mut client = spread_client(&format!("{},{}", a.url(), b.url())).await;
    assert_eq!(
        count_answers(&mut client, 2).await.len(),
        2,
        "both answer at first"
    );
    a.stop().await;
    let counts = count_answers(&mut client, 10).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    for _ in 0..4 {
        let request = LoginRequest {
            username: "u".to_owned(),
            password: "p".to_owned(),
        };
        let reply = tokio::time::timeout(BOUND, client.login(request))
            .await
            .expect("in time")
            .expect("the login reaches b")
            .into_inner();
        assert_eq!(reply.message, "b");
    }
    assert_eq!(b.logins.load(Ordering::SeqCst), 4, "each login made once");
    b.stop().await;
}

/// A name's records are looked up again: a replica that appears gets calls, one that
/// disappears gets none (and its loss fails no call).
#[tokio::test]
async fn replicas_follow_the_name() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let answers = Arc::new(Mutex::new(vec![a.address, b.address]));
    let resolver: Resolver = {
        let answers = Arc::clone(&answers);
        Arc::new(move |_| {
            let answers = answers.lock().expect("lock").clone();
            Box::pin(async move { Ok(answers) })
        })
    };
    let spread = Spread::new(
        "http://tasks.auth.test:50054",
        &ClientTls::default(),
        Arc::new(|endpoint| endpoint),
        resolver,
        Duration::from_millis(50),
    )
    .await
    .expect("resolves");
    assert_eq!(spread.replica_urls(), [a.url(), b.url()]);
    let mut client = AuthServiceClient::new(Connection::spread(spread));
    assert_eq!(count_answers(&mut client, 4).await.len(), 2);

    let c = Replica::start("c").await;
    *answers.lock().expect("lock") = vec![a.address, c.address];
    b.stop().await;
    let seen_c = tokio::time::timeout(BOUND, async {
        loop {
            if who_answers(&mut client).await == "c" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen_c.is_ok(), "the new replica gets calls");
    let counts = count_answers(&mut client, 10).await;
    assert_eq!(counts.get("b"), None, "{counts:?}");
    assert_eq!(counts.len(), 2, "{counts:?}");
    a.stop().await;
    c.stop().await;
}

/// The session guard (`--auth-url a,b`) checks sessions with the replicas in turn, and
/// with the other one when one has stopped.
#[tokio::test]
async fn guard_checks_with_any_auth_replica() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let guard = grpc_suite::session_guard::SessionGuard::new(
        &format!("{},{}", a.url(), b.url()),
        &ClientTls::default(),
    )
    .expect("guard");
    let check = |session: String| {
        let guard = guard.clone();
        async move {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {session}").parse().expect("header"),
            );
            guard.check(&headers).await.expect("valid").username
        }
    };
    let mut users = std::collections::HashSet::new();
    for index in 0..4 {
        users.insert(check(format!("s{index}")).await);
    }
    assert_eq!(users.len(), 2, "both replicas are asked: {users:?}");
    a.stop().await;
    for index in 4..10 {
        assert_eq!(check(format!("s{index}")).await, "b");
    }
    b.stop().await;
}

/// The plain channel over several replicas (the auth service's audit deliveries) reaches
/// every one of them.
#[tokio::test]
async fn lazy_channel_reaches_every_replica() {
    let a = Replica::start("a").await;
    let b = Replica::start("b").await;
    let channel = grpc_suite::balance::lazy_channel(
        &format!("{},{}", a.url(), b.url()),
        &ClientTls::default(),
        Arc::new(|endpoint| endpoint),
    )
    .expect("channel");
    let mut client = AuthServiceClient::new(Connection::from(channel));
    let counts = tokio::time::timeout(BOUND, async {
        loop {
            let counts = count_answers(&mut client, 10).await;
            if counts.len() == 2 {
                return counts;
            }
        }
    })
    .await
    .expect("both replicas answer");
    assert_eq!(counts.values().sum::<usize>(), 10);
    a.stop().await;
    b.stop().await;
}
