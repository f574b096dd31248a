//! Cloud Storage as a state backend (`gs://bucket/prefix`): the lock is an
//! object created with `ifGenerationMatch=0`, which Cloud Storage refuses
//! with 412 when the object exists.

use std::sync::Arc;

use super::storage::StorageApi;
use super::{Client, Credentials, GcpError};
use crate::state::{Backend, StateError};

/// One bucket through the JSON API (`STORAGE_EMULATOR_HOST` honoured).
pub struct GcsBackend {
    api: StorageApi,
    bucket: String,
}

impl GcsBackend {
    pub fn new(
        bucket: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<GcsBackend, StateError> {
        let endpoint = StorageApi::endpoint(None, env);
        // Plain http (an emulator) is asked anonymously.
        let credentials = if endpoint.starts_with("http://") {
            None
        } else {
            Credentials::discover(env).map_err(|error| StateError::Unreachable {
                location: format!("gs://{bucket}"),
                reason: error.to_string(),
            })?
        };
        Ok(GcsBackend {
            api: StorageApi::new(Arc::new(Client::new(credentials)), &endpoint),
            bucket: bucket.to_string(),
        })
    }

    fn unreachable(&self, key: &str, error: GcpError) -> StateError {
        StateError::Unreachable {
            location: format!("gs://{}/{key}", self.bucket),
            reason: error.to_string(),
        }
    }
}

impl Backend for GcsBackend {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        match self.api.get_object(&self.bucket, key) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(error) if error.is_not_found() => Ok(None),
            Err(error) => Err(self.unreachable(key, error)),
        }
    }

    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), StateError> {
        self.api
            .insert_object(&self.bucket, key, bytes, "application/json")
            .map_err(|error| self.unreachable(key, error))
    }

    fn create_new(&self, key: &str, bytes: &[u8]) -> Result<bool, StateError> {
        match self
            .api
            .insert_object_if_absent(&self.bucket, key, bytes, "application/json")
        {
            Ok(created) => Ok(created),
            Err(error) => Err(self.unreachable(key, error)),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StateError> {
        match self.api.delete_object(&self.bucket, key) {
            Ok(()) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(self.unreachable(key, error)),
        }
    }
}
