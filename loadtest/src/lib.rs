//! ringcast-loadtest: a load generator that speaks only the public client protocol (JSON over
//! WebSocket), so it can drive ringcast through its gateway, one node, nodes behind nginx, or
//! any other server of the seed protocol; `api` also calls ringcast's server API over HTTP.
//!
//! `main.rs` parses the [`cli::Cli`], builds a multi-threaded runtime and calls [`run`].

pub mod ack_reader;
pub mod acks;
pub mod api;
pub mod api_caller;
pub mod api_client;
pub mod api_plan;
pub mod api_report;
pub mod backoff;
pub mod catchup;
pub mod churn;
pub mod cli;
pub mod conn;
pub mod connect;
pub mod connections;
pub mod counters;
pub mod direct;
pub mod error;
pub mod fanout;
pub mod faults;
pub mod frame;
pub mod handshake;
pub mod http;
pub mod latency;
pub mod limits;
pub mod outbox;
pub mod pacer;
pub mod placement;
pub mod presence;
pub mod progress;
pub mod raw;
pub mod receiver;
pub mod recover;
pub mod rejoin;
pub mod report;
pub mod resume;
pub mod seqcounts;
pub mod stamp;
pub mod stream;
pub mod target;
pub mod tracker;
pub mod traffic;

use std::sync::Arc;

use cli::{Cli, Scenario};
use conn::Ws;
use connect::Connector;
use error::RunError;
use report::Outcome;

/// Runs the scenario `cli` names; a probe connection first turns a wrong URL, a refused
/// connection or a server speaking another protocol into one clear error.
pub async fn run(cli: &Cli) -> Result<Outcome, RunError> {
    let common = &cli.common;
    let targets = target::resolve_all(&common.urls).await?;
    let sources = target::source_addrs(&common.source_addrs, &targets)?;
    let timeout = fanout::secs(common.welcome_timeout_secs, "--welcome-timeout-secs")?;
    let prefix = common
        .id_prefix
        .clone()
        .unwrap_or_else(|| format!("lt{}", std::process::id()));
    ringcast_protocol::validate_client_id(&format!("{prefix}-probe0"))
        .map_err(|e| RunError::Usage(format!("--id-prefix {prefix:?}: {e}")))?;
    let tls =
        match &common.tls_ca {
            Some(ca) => {
                Some(stream::connector(ca).map_err(|e| RunError::Usage(format!("--tls-ca {e}")))?)
            }
            None if targets.iter().any(|t| t.tls) => return Err(RunError::Usage(
                "a wss:// --url needs --tls-ca PEM (the CA that signed the server's certificate)"
                    .into(),
            )),
            None => None,
        };
    let connector = Arc::new(
        Connector::new(
            targets,
            sources,
            common
                .read_buffer_bytes
                .unwrap_or_else(|| cli.scenario.default_read_buffer_bytes()),
            timeout,
            prefix,
            common.require_welcome,
        )
        .with_tls(tls),
    );
    probe(&connector).await?;
    let progress = !common.no_progress;
    let concurrency = common.connect_concurrency.max(1);
    let urls: Vec<String> = connector.targets().iter().map(|t| t.url.clone()).collect();
    let mut outcome = match &cli.scenario {
        Scenario::Fanout(a) => fanout::run(a, connector, concurrency, progress).await,
        Scenario::Connections(a) => connections::run(a, connector, concurrency, progress).await,
        Scenario::Direct(a) => direct::run(a, connector, concurrency, progress).await,
        Scenario::Churn(a) => churn::run(a, connector, concurrency, progress).await,
        Scenario::Faults(a) => faults::run(a, connector, progress).await,
        Scenario::Resume(a) => resume::run(a, connector, concurrency, progress).await,
        Scenario::Presence(a) => presence::run(a, connector, concurrency, progress).await,
        Scenario::Api(a) => api::run(a, connector, concurrency, progress).await,
    }?;
    if let Some(obj) = outcome.json.as_object_mut() {
        obj.insert("urls".into(), urls.into());
    }
    Ok(outcome)
}

/// Connects once to every target and closes again.
async fn probe(connector: &Connector) -> Result<(), RunError> {
    for i in 0..connector.targets().len() {
        let id = connector.client_id("probe", i);
        let (mut ws, _) = connector.connect::<Ws>(i, &id).await?;
        // Wait for the server's answer so the probe no longer counts against its limits.
        let _ = tokio::time::timeout(connector.timeout(), async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
        })
        .await;
    }
    Ok(())
}
