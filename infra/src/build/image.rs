//! The OCI image, without a daemon (the ko/jib way): the base image's
//! manifest and config are read from its registry, the service binary
//! becomes one more gzip layer, a new config (entrypoint, user 65532, env,
//! exposed port, labels) and an OCI manifest are written, and everything is
//! pushed blobs first, manifest last.
//!
//! Reproducible: the layer's tar has fixed times, owners and order, gzip has
//! no name or time, and the config's `created` is the epoch, so the same
//! binary on the same base gives the same digests and a rebuild pushes
//! nothing new.

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::{Value, json};

use super::credentials::Credential;
use super::registry::{
    PushStats, Reference, RegistryError, Repository, Transport, digest_of, media,
};
use crate::config::Architecture;

/// Where the binary goes in the image.
pub const BINARY_DIR: &str = "usr/local/bin";
/// The port the image's service listens on (`PORT`).
pub const PORT: u16 = 8080;
/// distroless's `nonroot`: numeric, so Kubernetes `runAsNonRoot` can verify it.
pub const USER: &str = "65532:65532";

/// A gzip layer: its bytes, their digest and the uncompressed tar's digest.
#[derive(Debug, Clone)]
pub struct Layer {
    pub gzip: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
}

/// The binary as a layer: `/usr/local/bin/<name>`, mode 0755, owned by root.
pub fn binary_layer(name: &str, binary: &[u8]) -> std::io::Result<Layer> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    let mut path = String::new();
    for component in BINARY_DIR.split('/') {
        path.push_str(component);
        path.push('/');
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(0o755);
        header.set_size(0);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder.append_data(&mut header, &path, std::io::empty())?;
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o755);
    header.set_size(binary.len() as u64);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    builder.append_data(&mut header, format!("{BINARY_DIR}/{name}"), binary)?;
    let tar = builder.into_inner()?;
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(&tar)?;
    let gzip = encoder.finish()?;
    Ok(Layer {
        digest: digest_of(&gzip),
        diff_id: digest_of(&tar),
        gzip,
    })
}

/// What the image's config says besides the base's.
#[derive(Debug, Clone)]
pub struct ImageSettings {
    pub binary: String,
    pub architecture: Architecture,
    /// Variables added to the base's (`PORT`, `KIT_LOG_FORMAT`).
    pub env: Vec<(String, String)>,
    pub labels: Vec<(String, String)>,
}

/// The image config: the base's runtime settings with ours on top, the
/// base's layers plus `layer`, and fixed times.
pub fn config(base: &Value, settings: &ImageSettings, layer: &Layer) -> Vec<u8> {
    let base_config = &base["config"];
    let mut env: Vec<String> = base_config["Env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .filter(|entry| {
            let name = entry.split('=').next().unwrap_or_default();
            !settings.env.iter().any(|(ours, _)| ours == name)
        })
        .collect();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    env.extend(settings.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut labels = base_config["Labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (key, value) in &settings.labels {
        labels.insert(key.clone(), Value::String(value.clone()));
    }
    let mut diff_ids: Vec<Value> = base["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    diff_ids.push(Value::String(layer.diff_id.clone()));
    let mut history: Vec<Value> = base["history"].as_array().cloned().unwrap_or_default();
    history.push(json!({
        "created": "1970-01-01T00:00:00Z",
        "created_by": format!("deploy-kit build: /{BINARY_DIR}/{}", settings.binary),
    }));
    let document = json!({
        "architecture": settings.architecture.oci(),
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "User": USER,
            "Env": env,
            "Entrypoint": [format!("/{BINARY_DIR}/{}", settings.binary)],
            "Cmd": ["serve", "--listen", format!("0.0.0.0:{PORT}")],
            "ExposedPorts": {format!("{PORT}/tcp"): {}},
            "Labels": labels,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    serde_json::to_vec(&document).expect("a JSON value serializes")
}

/// A descriptor of a blob.
fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// The OCI manifest of `config` and `layers` (media type, digest, size).
pub fn manifest(config: &[u8], layers: &[(String, String, u64)]) -> Vec<u8> {
    let layers: Vec<Value> = layers
        .iter()
        .map(|(media_type, digest, size)| json!({"mediaType": media_type, "digest": digest, "size": size}))
        .collect();
    let document = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": descriptor(media::OCI_CONFIG, &digest_of(config), config.len()),
        "layers": layers,
    });
    serde_json::to_vec(&document).expect("a JSON value serializes")
}

/// The base image as read from its registry.
#[derive(Debug)]
pub struct BaseImage {
    pub reference: Reference,
    /// Its manifest's digest (of the platform's manifest, under an index).
    pub digest: String,
    pub config: Value,
    /// (media type, digest, size) of each layer, bottom first.
    pub layers: Vec<(String, String, u64)>,
    repository: Repository,
}

/// Reads the base image's manifest (picking `architecture` from an index)
/// and config.
pub fn read_base(
    reference: &Reference,
    transport: &Transport,
    credential: Option<Credential>,
    architecture: Architecture,
) -> Result<BaseImage, RegistryError> {
    let mut repository = Repository::open(reference, transport, credential, false)?;
    let shown = reference.to_string();
    let (mut bytes, mut media_type, mut digest) =
        repository.manifest(reference.manifest_reference(), &shown)?;
    if media_type == media::OCI_INDEX || media_type == media::DOCKER_LIST {
        let index: Value = serde_json::from_slice(&bytes).map_err(|e| protocol(reference, e))?;
        let chosen = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["platform"]["os"] == "linux"
                    && m["platform"]["architecture"] == architecture.oci()
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| RegistryError::NotFound {
                reference: format!("{shown} for linux/{}", architecture.oci()),
            })?
            .to_string();
        (bytes, media_type, digest) = repository.manifest(&chosen, &shown)?;
    }
    if media_type != media::OCI_MANIFEST && media_type != media::DOCKER_MANIFEST {
        return Err(RegistryError::Protocol {
            registry: reference.registry.clone(),
            message: format!("`{shown}` is a `{media_type}`, not an image manifest"),
        });
    }
    let manifest: Value = serde_json::from_slice(&bytes).map_err(|e| protocol(reference, e))?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| protocol(reference, "the manifest has no config digest"))?
        .to_string();
    let config: Value = serde_json::from_slice(&repository.blob(&config_digest)?)
        .map_err(|e| protocol(reference, e))?;
    if config["architecture"]
        .as_str()
        .is_some_and(|a| a != architecture.oci())
    {
        return Err(RegistryError::Protocol {
            registry: reference.registry.clone(),
            message: format!(
                "base image `{shown}` is for `{}`, the target runs `{}`",
                config["architecture"].as_str().unwrap_or_default(),
                architecture.oci()
            ),
        });
    }
    let layers = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|layer| {
            let media_type = match layer["mediaType"].as_str().unwrap_or(media::OCI_LAYER_GZIP) {
                // The same bytes; an OCI manifest names them the OCI way.
                "application/vnd.docker.image.rootfs.diff.tar.gzip" => media::OCI_LAYER_GZIP,
                other => other,
            };
            (
                media_type.to_string(),
                layer["digest"].as_str().unwrap_or_default().to_string(),
                layer["size"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    Ok(BaseImage {
        reference: reference.clone(),
        digest,
        config,
        layers,
        repository,
    })
}

fn protocol(reference: &Reference, error: impl std::fmt::Display) -> RegistryError {
    RegistryError::Protocol {
        registry: reference.registry.clone(),
        message: format!("`{reference}`: {error}"),
    }
}

/// What a push made.
#[derive(Debug, Clone)]
pub struct Pushed {
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    /// Compressed bytes of every layer, base included.
    pub image_bytes: u64,
    pub stats: PushStats,
}

/// Pushes the image of `base` + `layer` with `config` to `target` (tag
/// `tag`, or only by its digest for `None`: one architecture under an
/// index): base layers (skipped when present, mounted within one
/// registry, else copied), our layer, the config, then the manifest.
pub fn push(
    base: &mut BaseImage,
    layer: &Layer,
    config: &[u8],
    target: &Reference,
    tag: Option<&str>,
    transport: &Transport,
    credential: Option<Credential>,
) -> Result<Pushed, RegistryError> {
    let mut repository = Repository::open(target, transport, credential, true)?;
    let mut stats = PushStats::default();
    let same_registry = base.reference.registry == target.registry;
    let from = base.reference.repository.clone();
    let mut layers = base.layers.clone();
    for (_, digest, _) in &base.layers {
        let source = &mut base.repository;
        repository.ensure_blob(
            digest,
            &mut || source.blob(digest),
            same_registry.then_some(from.as_str()),
            &mut stats,
        )?;
    }
    repository.ensure_blob(
        &layer.digest,
        &mut || Ok(layer.gzip.clone()),
        None,
        &mut stats,
    )?;
    layers.push((
        media::OCI_LAYER_GZIP.to_string(),
        layer.digest.clone(),
        layer.gzip.len() as u64,
    ));
    let config_digest = digest_of(config);
    repository.ensure_blob(
        &config_digest,
        &mut || Ok(config.to_vec()),
        None,
        &mut stats,
    )?;
    let manifest = manifest(config, &layers);
    let reference = tag.map_or_else(|| digest_of(&manifest), str::to_string);
    let manifest_digest = repository.put_manifest(&reference, media::OCI_MANIFEST, &manifest)?;
    Ok(Pushed {
        manifest_size: manifest.len() as u64,
        manifest_digest,
        config_digest,
        image_bytes: layers.iter().map(|(_, _, size)| size).sum(),
        stats,
    })
}

/// One image under an index: its manifest and platform.
#[derive(Debug, Clone)]
pub struct IndexEntry {
    pub digest: String,
    pub size: u64,
    pub architecture: Architecture,
}

/// The OCI image index over `entries`, one `linux/<arch>` platform each (in
/// the order given: the same images give the same index digest).
pub fn index(entries: &[IndexEntry]) -> Vec<u8> {
    let manifests: Vec<Value> = entries
        .iter()
        .map(|entry| {
            let mut platform = json!({"architecture": entry.architecture.oci(), "os": "linux"});
            if entry.architecture == Architecture::Arm64 {
                platform["variant"] = json!("v8");
            }
            json!({
                "mediaType": media::OCI_MANIFEST,
                "digest": entry.digest,
                "size": entry.size,
                "platform": platform,
            })
        })
        .collect();
    let document = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": manifests,
    });
    serde_json::to_vec(&document).expect("a JSON value serializes")
}

/// Pushes the index over images already pushed to `target`, under `tag`;
/// returns its digest. The images go first, so no index names a missing one.
pub fn push_index(
    entries: &[IndexEntry],
    target: &Reference,
    tag: &str,
    transport: &Transport,
    credential: Option<Credential>,
) -> Result<String, RegistryError> {
    let mut repository = Repository::open(target, transport, credential, true)?;
    repository.put_manifest(tag, media::OCI_INDEX, &index(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_names_each_platform_in_order() {
        let entries = [
            IndexEntry {
                digest: "sha256:aa".into(),
                size: 10,
                architecture: Architecture::X86_64,
            },
            IndexEntry {
                digest: "sha256:bb".into(),
                size: 20,
                architecture: Architecture::Arm64,
            },
        ];
        let bytes = index(&entries);
        assert_eq!(bytes, index(&entries));
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["mediaType"], media::OCI_INDEX);
        assert_eq!(
            value["manifests"],
            json!([
                {"mediaType": media::OCI_MANIFEST, "digest": "sha256:aa", "size": 10,
                 "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": media::OCI_MANIFEST, "digest": "sha256:bb", "size": 20,
                 "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            ])
        );
    }

    #[test]
    fn the_binary_layer_is_reproducible_and_holds_the_binary() {
        let first = binary_layer("acme", b"\x7fELF binary").unwrap();
        let second = binary_layer("acme", b"\x7fELF binary").unwrap();
        assert_eq!(first.digest, second.digest);
        assert_eq!(first.diff_id, second.diff_id);
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&first.gzip[..]), &mut tar)
            .unwrap();
        assert_eq!(digest_of(&tar), first.diff_id);
        let mut archive = tar::Archive::new(&tar[..]);
        let entries: Vec<(String, u32, u64)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                    e.header().mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            entries,
            [
                ("usr/".to_string(), 0o755, 0),
                ("usr/local/".to_string(), 0o755, 0),
                ("usr/local/bin/".to_string(), 0o755, 0),
                ("usr/local/bin/acme".to_string(), 0o755, 0),
            ]
        );
    }

    #[test]
    fn the_config_keeps_the_base_and_sets_entrypoint_user_port_and_labels() {
        let base = json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/bin:/bin", "PORT=1"], "Labels": {"base": "yes"}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:base"]},
            "history": [{"created_by": "base"}],
        });
        let layer = binary_layer("acme", b"bin").unwrap();
        let settings = ImageSettings {
            binary: "acme".into(),
            architecture: Architecture::X86_64,
            env: vec![("PORT".into(), "8080".into())],
            labels: vec![("org.opencontainers.image.title".into(), "acme".into())],
        };
        let bytes = config(&base, &settings, &layer);
        assert_eq!(bytes, config(&base, &settings, &layer));
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value["config"]["Entrypoint"],
            json!(["/usr/local/bin/acme"])
        );
        assert_eq!(value["config"]["User"], "65532:65532");
        assert_eq!(
            value["config"]["Env"],
            json!(["PATH=/usr/bin:/bin", "PORT=8080"])
        );
        assert_eq!(value["config"]["ExposedPorts"], json!({"8080/tcp": {}}));
        assert_eq!(value["config"]["Labels"]["base"], "yes");
        assert_eq!(
            value["config"]["Labels"]["org.opencontainers.image.title"],
            "acme"
        );
        assert_eq!(
            value["rootfs"]["diff_ids"],
            json!(["sha256:base", layer.diff_id])
        );
        assert_eq!(value["history"].as_array().unwrap().len(), 2);
        let manifest: Value = serde_json::from_slice(&manifest(
            &bytes,
            &[(media::OCI_LAYER_GZIP.into(), layer.digest.clone(), 3)],
        ))
        .unwrap();
        assert_eq!(manifest["config"]["digest"], digest_of(&bytes));
        assert_eq!(manifest["mediaType"], media::OCI_MANIFEST);
    }
}
