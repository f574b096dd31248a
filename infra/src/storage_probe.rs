//! Which `StorageProbe` `doctor --online` uses for `storage.provider`.
//!
//! Each cloud's probe sits behind its cargo feature; a build without it
//! answers with the reason the storage checks skip, naming the rebuild.
//! Engines add one arm each here and nothing else.

use kit_checks::facts::StorageProvider;
use kit_checks::probe::StorageProbe;

use crate::config::DeployConfig;

/// The probe for `config.storage`, or why there is none (the skip reason).
/// `target` picks the region an S3 probe signs for; `env` supplies GCS
/// credentials and endpoint overrides.
pub fn storage_probe(
    config: &DeployConfig,
    target: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn StorageProbe>, String> {
    let Some(storage) = &config.storage else {
        return Err(crate::doctor::STORAGE_UNAVAILABLE.to_string());
    };
    match storage.provider {
        StorageProvider::Gcs => gcs(storage, env),
        _ => s3(config, storage, target),
    }
}

/// S3, R2 and S3-compatible stores (feature `aws`).
#[cfg(feature = "aws")]
fn s3(
    config: &DeployConfig,
    storage: &crate::config::StorageConfig,
    target: Option<&str>,
) -> Result<Box<dyn StorageProbe>, String> {
    let region = config
        .target(target)
        .ok()
        .and_then(|(_, target)| target.region.clone());
    match crate::s3_probe::S3StorageProbe::for_storage(storage, region.as_deref()) {
        Some(Ok(probe)) => Ok(Box::new(probe)),
        Some(Err(error)) => Err(error.message),
        None => Err(crate::doctor::STORAGE_UNAVAILABLE.to_string()),
    }
}

#[cfg(not(feature = "aws"))]
fn s3(
    _config: &DeployConfig,
    _storage: &crate::config::StorageConfig,
    _target: Option<&str>,
) -> Result<Box<dyn StorageProbe>, String> {
    Err("the S3 storage probe needs deploy-kit built with `--features aws`".to_string())
}

#[cfg(feature = "gcp")]
fn gcs(
    storage: &crate::config::StorageConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn StorageProbe>, String> {
    use crate::gcp::{Client, Credentials, probe::GcsProbe, storage::StorageApi};
    let endpoint = StorageApi::endpoint(storage.endpoint.as_deref(), env);
    // Plain http (an emulator) is asked anonymously; don't demand a key for it.
    let credentials = if endpoint.starts_with("http://") {
        None
    } else {
        Credentials::discover(env).map_err(|e| e.to_string())?
    };
    let api = StorageApi::new(std::sync::Arc::new(Client::new(credentials)), &endpoint);
    Ok(Box::new(GcsProbe::new(api, &storage.bucket)))
}

#[cfg(not(feature = "gcp"))]
fn gcs(
    _storage: &crate::config::StorageConfig,
    _env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn StorageProbe>, String> {
    Err(format!(
        "this deploy-kit was built without GCS support; rebuild with `{}`",
        crate::GCP_REBUILD
    ))
}
