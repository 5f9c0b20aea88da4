//! `weft-waypoint`: the waypoint process.
fn main() -> anyhow::Result<()> {
    Ok(())
}
