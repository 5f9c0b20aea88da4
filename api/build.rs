//! Generates Rust types (prost) and gRPC stubs (tonic) from `proto/*.proto`. protoc and the
//! well-known types come from Debian's protobuf-compiler and libprotobuf-dev, installed by
//! `cargo xtask setup`.
fn main() -> std::io::Result<()> {
    println!("cargo::rerun-if-changed=proto");
    tonic_prost_build::configure()
        // A workload's Services in key order: a HashMap's order is its own from one map to the
        // next, so the control plane would encode an unchanged workload differently, give it a
        // new version and push it to every proxy at every rebuild.
        .btree_map(".istio.workload.Workload.services")
        .compile_protos(
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
