//! Generates Rust types from `proto/*.proto` with prost (protoc comes from Debian's
//! protobuf-compiler, installed by `cargo xtask setup`).
fn main() -> std::io::Result<()> {
    println!("cargo::rerun-if-changed=proto");
    prost_build::compile_protos(&["proto/zds.proto"], &["proto"])
}
