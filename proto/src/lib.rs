//! gRPC contracts of weir, generated from `proto/*.proto`.

/// Driver ↔ executor control plane.
pub mod control {
    tonic::include_proto!("weir.control.v1");
}

/// Executor ↔ executor exchange of partial aggregates (Arrow Flight stream headers and markers).
pub mod exchange {
    tonic::include_proto!("weir.exchange.v1");
}

/// The driver's admin service.
pub mod admin {
    tonic::include_proto!("weir.admin.v1");
}

pub mod admin_json;
pub mod cluster_auth;
