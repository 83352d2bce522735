//! Compiles `petset/v1/*.proto` into Rust and writes the descriptor set that
//! the services hand to gRPC reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "petset/v1/meta.proto",
        "petset/v1/identity.proto",
        "petset/v1/service.proto",
        "petset/v1/lease.proto",
        "petset/v1/storage.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("petset_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
