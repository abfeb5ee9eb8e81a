//! `fedmesh node` and `fedmesh coordinator`: loads the settings (or prints them), warns of what an
//! operator should fix, loads the key, opens the store, starts the network, the job engine, the
//! admin API and the metrics server, and runs until SIGINT or SIGTERM.

use crate::admin;
use crate::cli::NodeArgs;
use crate::config::NodeConfig;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::network::{self, BehaviourSettings};
use crate::store::Store;
use anyhow::Context;
use fedmesh_admin_api::Endpoint;
use libp2p::Multiaddr;
use std::sync::Arc;
use std::time::Duration;

/// Runs a node; `coordinator` makes it coordinate the orchestrated jobs that name its key.
pub fn run(args: &NodeArgs, coordinator: bool) -> anyhow::Result<()> {
    let mut config = NodeConfig::from_args(args)?;
    config.coordinate |= coordinator;
    if args.print_config {
        print!("{}", config.to_toml()?);
        return Ok(());
    }
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_node(config))
}

fn parse_addresses(setting: &str, values: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    values
        .iter()
        .map(|value| {
            value
                .parse::<Multiaddr>()
                .with_context(|| format!("setting `{setting}`: `{value}` is not a multiaddress"))
        })
        .collect()
}

async fn run_node(config: NodeConfig) -> anyhow::Result<()> {
    let listen = parse_addresses("listen", &config.listen)?;
    let bootstrap = parse_addresses("bootstrap", &config.bootstrap)?;
    let key = crate::identity::load_node_key(&config.key)?;
    crate::owner_only::create_dir(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let store = Arc::new(
        Store::open(&config.data_dir)?.with_model_retention(config.model_retention_rounds),
    );
    let metrics = Arc::new(Metrics::new());
    let settings = BehaviourSettings {
        max_connections: config.max_connections,
        max_message_bytes: config.max_message_bytes,
        request_timeout: Duration::from_secs(config.request_timeout_secs),
        gossip_heartbeat: Duration::from_millis(config.gossip_heartbeat_ms),
        mdns: config.mdns,
        relay: config.relay,
        bulk_buffer_bytes: config.bulk_buffer_bytes,
        ..BehaviourSettings::default()
    };
    let (network, events) = network::start(
        crate::identity::libp2p_keypair(&key)?,
        &listen,
        &settings,
        metrics.clone(),
    )?;
    tracing::info!(peer_id = %key.member_id(), data_dir = %config.data_dir.display(), "node starting");
    for address in bootstrap {
        network.dial(address).await?;
    }
    let (engine, handle) = Engine::new(key, config.engine_settings(), store, network, metrics)?;
    let engine_task = tokio::spawn(engine.run(events));

    let listener = bind("admin", config.admin).await?;
    let metrics_listener = bind("metrics", config.metrics).await?;
    let endpoint =
        Endpoint::with_random_token(listener.local_addr()?, Some(metrics_listener.local_addr()?));
    endpoint.write(&config.data_dir)?;
    tracing::info!(address = %endpoint.address, "admin API and web page listening");
    tracing::info!(address = %metrics_listener.local_addr()?, "metrics listening (GET /metrics)");
    let (stop_metrics, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task =
        tokio::spawn(admin::serve_metrics(metrics_listener, handle.clone(), async {
            let _ = metrics_stopped.await;
        }));
    // On a signal the engine stops at once: the admin API's graceful shutdown may wait on its
    // clients' open connections, and the node must not take part in rounds meanwhile.
    let engine = handle.clone();
    let stop_engine_first = async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        engine.shutdown().await;
    };
    admin::serve(listener, endpoint, handle.clone(), stop_engine_first).await?;
    let _ = stop_metrics.send(());
    let _ = metrics_task.await;
    let _ = tokio::time::timeout(Duration::from_secs(10), engine_task).await;
    let _ = std::fs::remove_file(Endpoint::path_in(&config.data_dir));
    Ok(())
}

/// Listens on the address of setting `setting`.
async fn bind(
    setting: &str,
    address: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("setting `{setting}`: cannot listen on {address}"))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
