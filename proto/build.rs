fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure()
        .compile_protos(&["proto/control.proto", "proto/exchange.proto"], &["proto"])?;
    Ok(())
}
