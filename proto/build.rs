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
        "petset/v1/agent.proto",
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
        "EnvVarSource",
        "ObjectFieldSelector",
        "ResourceFieldSelector",
        "KeySelector",
        "ObjectReference",
        "EnvFromSource",
        "Capabilities",
        "SecurityContext",
        "PodSecurityContext",
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
        "ServiceSpec",
        "ServicePort",
        "StorageClass",
    ];
    let mut config = tonic_prost_build::configure();
    for message in stored {
        config = config.type_attribute(
            format!(".petset.v1.{message}"),
            "#[derive(serde::Serialize, serde::Deserialize)] \
             #[serde(default, rename_all = \"camelCase\", deny_unknown_fields)]",
        );
    }
    // Kubernetes' IntOrString fields and quantities are numbers or strings
    // in YAML; here they are strings.
    for field in [
        "HttpGetAction.port",
        "TcpSocketAction.port",
        "RollingUpdateStrategy.max_unavailable",
        "ServicePort.target_port",
        "ResourceFieldSelector.divisor",
    ] {
        config = config.field_attribute(
            format!(".petset.v1.{field}"),
            "#[serde(deserialize_with = \"crate::serde_k8s::int_or_string\")]",
        );
    }
    for field in [
        "ResourceRequirements.requests",
        "ResourceRequirements.limits",
        "VolumeResourceRequirements.requests",
    ] {
        config = config.field_attribute(
            format!(".petset.v1.{field}"),
            "#[serde(deserialize_with = \"crate::serde_k8s::quantities\")]",
        );
    }
    config
        .field_attribute(".petset.v1.ObjectMeta.creation_timestamp", "#[serde(skip)]")
        .field_attribute(
            ".petset.v1.ServiceSpec.cluster_ip",
            "#[serde(rename = \"clusterIP\")]",
        )
        .file_descriptor_set_path(out.join("petset_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
