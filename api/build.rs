//! Generates Rust types (prost) and gRPC stubs (tonic) from `proto/*.proto`. protoc and the
//! well-known types come from Debian's protobuf-compiler and libprotobuf-dev, installed by
//! `cargo xtask setup`.
fn main() -> std::io::Result<()> {
    println!("cargo::rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/zds.proto",
            "proto/ca.proto",
            "proto/xds.proto",
            "proto/workload.proto",
            "proto/authorization.proto",
            "proto/route.proto",
            "proto/http_authorization.proto",
            "proto/request_authentication.proto",
            "proto/otlp_trace.proto",
        ],
        &["proto", "/usr/include"],
    )
}
