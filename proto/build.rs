fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        // The admin messages print as JSON (`weir admin --json`) with Spark's camelCase names.
        .message_attribute(
            ".weir.admin.v1",
            "#[derive(serde::Serialize)] #[serde(rename_all = \"camelCase\")]",
        )
        .field_attribute(
            ".weir.admin.v1.QueryStatus.state",
            "#[serde(serialize_with = \"crate::admin_json::query_state\")]",
        )
        .field_attribute(
            ".weir.admin.v1.ExecutorInfo.state",
            "#[serde(serialize_with = \"crate::admin_json::executor_state\")]",
        )
        .compile_protos(
            &[
                "proto/control.proto",
                "proto/exchange.proto",
                "proto/admin.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
