//! `weft-agent`: the node agent binary; all logic lives in the library.
use clap::Parser;

/// Weft node agent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// cgroup v2 directory whose processes' sockets the datapath sees.
    #[arg(long, env = "WEFT_CGROUP_ROOT", default_value = "/sys/fs/cgroup/unified")]
    cgroup_root: std::path::PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args = Args::parse();
    tracing::info!(?args, "starting");
    let mut datapath = weft_agent::datapath::Datapath::load()?;
    datapath.attach_connect4(&args.cgroup_root)?;
    tracing::info!("datapath attached; enrollment arrives with the agent issue");
    Ok(())
}
