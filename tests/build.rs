//! Generates the test apps' gRPC service (`proto/echo.proto`) with tonic, as `weft-api` does
//! for Weft's own protocols; protoc comes from `cargo xtask setup`.
fn main() -> std::io::Result<()> {
    println!("cargo::rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/echo.proto"], &["proto"])
}
