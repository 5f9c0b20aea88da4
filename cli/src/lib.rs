//! `weftctl`, the bundled CLI. Inputs: the control plane's and node proxies' admin endpoints and
//! the Kubernetes API. Outputs: tables (or JSON/YAML) of workloads, certificates, policies and
//! live connections, and explanations of why a connection was allowed or denied.
//!
//! Built under the End-to-end issue; this crate holds its place in the workspace until then.
