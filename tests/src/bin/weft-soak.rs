//! `weft-soak`: the mesh under steady traffic and a stream of faults for `--minutes` (see
//! [`weft_tests::soak`]); prints the report and exits non-zero with the reasons if the soak
//! failed. `cargo xtask soak --minutes N` builds the workspace and runs it.
use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// How long the soak runs.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    weft_tests::require_root();
    match weft_tests::soak::run(weft_tests::soak::Length::Minutes(args.minutes)).await {
        Ok(outcome) => {
            print!("{}", outcome.report());
            match outcome.verdict() {
                None => std::process::ExitCode::SUCCESS,
                Some(why) => {
                    eprintln!("soak failed: {why}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Err(error) => {
            eprintln!("soak could not run: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
