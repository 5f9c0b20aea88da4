//! `weft-ztunnel`: the node proxy binary; all logic lives in the library.
use std::{path::PathBuf, time::Duration};

use clap::Parser;
use weft_ztunnel::{app, proxy::InboundPlaintext};

/// Weft node proxy.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// The agent's pod-handoff (ZDS) socket.
    #[arg(long, env = "WEFT_ZDS_SOCKET", default_value = weft_api::zds::DEFAULT_SOCKET)]
    zds_socket: PathBuf,
    /// Workloads as JSON (`{"workloads": [...]}`), until the control plane's xDS.
    #[arg(long, env = "WEFT_LOCAL_CONFIG")]
    local_config: Option<PathBuf>,
    /// Development CA (`root.pem`, `root-key.pem`): signs locally, trusts every caller. Only
    /// until the control plane's CA; never in production.
    #[arg(long, env = "WEFT_DEV_CA_DIR")]
    dev_ca_dir: PathBuf,
    /// bpffs root of the node's capture datapath.
    #[arg(long, env = "WEFT_BPFFS_ROOT", default_value = weft_ebpf_common::pin::DEFAULT_ROOT)]
    bpffs_root: PathBuf,
    /// Refuse plaintext from outside the mesh (STRICT) instead of delivering it (PERMISSIVE).
    #[arg(long, env = "WEFT_STRICT")]
    strict: bool,
    /// Workload certificate lifetime, in seconds.
    #[arg(long, env = "WEFT_CERT_TTL_SECONDS", default_value_t = 24 * 3600)]
    cert_ttl_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    let config = app::Config {
        trust_domain: args.trust_domain,
        zds_socket: args.zds_socket,
        local_config: args.local_config,
        dev_ca_dir: args.dev_ca_dir,
        bpffs_root: Some(args.bpffs_root),
        plaintext: if args.strict { InboundPlaintext::Deny } else { InboundPlaintext::Allow },
        cert_ttl: Duration::from_secs(args.cert_ttl_seconds),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        app::run(config, shutdown).await?;
        anyhow::Ok(())
    })?;
    tracing::info!("stopped");
    Ok(())
}
