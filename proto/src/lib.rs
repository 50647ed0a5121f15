//! gRPC contracts of weir, generated from `proto/*.proto`.

/// Driver ↔ executor control plane.
pub mod control {
    tonic::include_proto!("weir.control.v1");
}
