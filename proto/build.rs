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
        "petset/v1/scheduler.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // The StatefulSet spec is stored as the API gave it (JSON, readable with
    // etcdctl), so the messages it is made of can be (de)serialized.
    let stored = [
        "ObjectMeta",
        "StatefulSetSpec",
        "SetSelector",
        "LabelSelectorRequirement",
        "PodTemplateSpec",
        "PodSpec",
        "Container",
        "EnvVar",
        "ContainerPort",
        "ResourceRequirements",
        "VolumeMount",
        "Probe",
        "HttpGetAction",
        "TcpSocketAction",
        "ExecAction",
        "Volume",
        "PersistentVolumeClaimVolumeSource",
        "EmptyDirVolumeSource",
        "UpdateStrategy",
        "RollingUpdateStrategy",
        "RetentionPolicy",
        "Ordinals",
        "PersistentVolumeClaimTemplate",
        "PersistentVolumeClaimSpec",
        "VolumeResourceRequirements",
        "LabelSelector",
    ];
    let mut config = tonic_prost_build::configure();
    for message in stored {
        config = config.type_attribute(
            format!(".petset.v1.{message}"),
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        );
    }
    config
        .field_attribute(".petset.v1.ObjectMeta.creation_timestamp", "#[serde(skip)]")
        .file_descriptor_set_path(out.join("petset_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
