//! A small client for the OCI distribution API: what `deploy-kit build`
//! needs to read a base image and push an image, on ureq like the rest of
//! deploy-kit's HTTP.
//!
//! Why not a crate: `oci-client` (the maintained Rust OCI client) is async
//! on tokio and reqwest, while every deploy-kit command is blocking on
//! ureq; `build` also reports the bytes it sent per blob (a rebuild with no
//! change must push 0 bytes), so it wants each HEAD, mount and upload in
//! its own hands. The protocol surface is small: HEAD/GET blobs and
//! manifests, POST+PUT (monolithic) or POST+PATCH..+PUT (chunked) uploads,
//! cross-repository mounts, PUT manifest, and the basic and bearer-token
//! challenges.
//!
//! Invariants: blobs are pushed before the manifest that names them, so a
//! failed push never leaves a manifest pointing at missing blobs; a
//! credential is never sent over plain `http://` unless the registry is
//! named in `DEPLOY_KIT_INSECURE_REGISTRIES`.

use std::time::Duration;

use sha2::Digest as _;
use ureq::http;

use super::credentials::Credential;

/// Media types deploy-kit writes and reads.
pub mod media {
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
}

/// The default registry of references without a host, as docker resolves them.
const DOCKER_HUB: &str = "registry-1.docker.io";

/// An image reference: `registry/repository[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`.
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parses as docker does: the first component is a registry when it has
    /// a `.` or `:` or is `localhost`; otherwise Docker Hub (`library/` for
    /// one-component names).
    pub fn parse(text: &str) -> Result<Reference, RegistryError> {
        let bad = |why: &str| RegistryError::BadReference {
            reference: text.to_string(),
            why: why.to_string(),
        };
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                if !digest.starts_with("sha256:") || digest.len() != 71 {
                    return Err(bad("the digest is not `sha256:` and 64 hex digits"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), path.to_string())
            }
            _ => (DOCKER_HUB.to_string(), rest.to_string()),
        };
        // A `:` after the last `/` starts the tag.
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => {
                (repository.to_string(), Some(tag.to_string()))
            }
            _ => (path, None),
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if repository.is_empty()
            || !repository.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-' | '/')
            })
        {
            return Err(bad(
                "the repository must be lower-case letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository@digest`: what deploys refer to.
    pub fn by_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The tag or digest to GET a manifest by (default `latest`).
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image reference `{reference}`: {why}")]
    BadReference { reference: String, why: String },
    #[error("registry `{registry}` is unreachable: {message}")]
    Unreachable { registry: String, message: String },
    #[error("registry `{registry}` refused the credentials for `{repository}` (401{detail})")]
    Unauthorized {
        registry: String,
        repository: String,
        /// `: no credentials` when none were found.
        detail: String,
    },
    #[error("registry `{registry}` denied access to `{repository}` (403)")]
    Denied {
        registry: String,
        repository: String,
    },
    #[error("`{reference}` does not exist in its registry (404)")]
    NotFound { reference: String },
    #[error("registry `{registry}`: {action} answered {status}: {message}")]
    Status {
        registry: String,
        action: String,
        status: u16,
        message: String,
    },
    #[error("registry `{registry}`: {message}")]
    Protocol { registry: String, message: String },
}

/// A `sha256:<hex>` digest of `bytes`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

/// How a client reaches registries: TLS roots and plain-HTTP registries.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// PEM certificates trusted instead of the webpki roots (`DEPLOY_KIT_REGISTRY_CA`).
    pub ca_pem: Option<Vec<u8>>,
    /// `host:port`s spoken to over plain HTTP (`DEPLOY_KIT_INSECURE_REGISTRIES`).
    pub insecure: Vec<String>,
    /// Blobs above this many bytes go up in chunks of this size (`DEPLOY_KIT_REGISTRY_CHUNK_BYTES`).
    pub chunk_bytes: usize,
}

/// Default chunk size of chunked uploads: 16 MiB.
pub const DEFAULT_CHUNK_BYTES: usize = 16 * 1024 * 1024;

impl Transport {
    /// From `DEPLOY_KIT_REGISTRY_CA`, `DEPLOY_KIT_INSECURE_REGISTRIES` and
    /// `DEPLOY_KIT_REGISTRY_CHUNK_BYTES`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Transport, String> {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let ca_pem = match set("DEPLOY_KIT_REGISTRY_CA") {
            Some(path) => Some(std::fs::read(&path).map_err(|error| {
                format!("`DEPLOY_KIT_REGISTRY_CA`: failed to read `{path}`: {error}")
            })?),
            None => None,
        };
        let chunk_bytes = match set("DEPLOY_KIT_REGISTRY_CHUNK_BYTES") {
            Some(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 1024)
                .ok_or_else(|| {
                    format!("`DEPLOY_KIT_REGISTRY_CHUNK_BYTES`: `{text}` is not a number of bytes >= 1024")
                })?,
            None => DEFAULT_CHUNK_BYTES,
        };
        Ok(Transport {
            ca_pem,
            insecure: set("DEPLOY_KIT_INSECURE_REGISTRIES")
                .map(|list| {
                    list.split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
            chunk_bytes,
        })
    }

    fn agent(&self) -> Result<ureq::Agent, String> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_global(Some(Duration::from_secs(600)))
            .max_redirects(0)
            .user_agent(concat!("deploy-kit/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &self.ca_pem {
            let certificates = ureq::tls::parse_pem(pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(Ok(certificate)),
                    Ok(_) => None,
                    Err(error) => Some(Err(error)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| format!("`DEPLOY_KIT_REGISTRY_CA`: {error}"))?;
            if certificates.is_empty() {
                return Err("`DEPLOY_KIT_REGISTRY_CA` holds no PEM certificate".into());
            }
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(
                        certificates,
                    )))
                    .build(),
            );
        }
        Ok(config.build().into())
    }
}

/// Counts of one push, for the command's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PushStats {
    pub blobs_pushed: usize,
    pub blobs_mounted: usize,
    pub blobs_skipped: usize,
    /// Bytes sent in blob uploads (manifests not counted).
    pub bytes_pushed: u64,
}

/// One repository of one registry, with its credential and token.
pub struct Repository {
    agent: ureq::Agent,
    base: String,
    registry: String,
    repository: String,
    credential: Option<Credential>,
    /// `push` asks the token server for `pull,push`.
    push: bool,
    authorization: Option<String>,
    chunk_bytes: usize,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("base", &self.base)
            .field("repository", &self.repository)
            .finish_non_exhaustive()
    }
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The largest manifest or config read into memory.
const MAX_SMALL_BODY: u64 = 16 * 1024 * 1024;
/// The largest base layer read into memory.
const MAX_BLOB: u64 = 4 * 1024 * 1024 * 1024;

impl Repository {
    /// A client for `reference`'s repository; `push` for write access.
    pub fn open(
        reference: &Reference,
        transport: &Transport,
        credential: Option<Credential>,
        push: bool,
    ) -> Result<Repository, RegistryError> {
        let plain = transport.insecure.contains(&reference.registry);
        let agent = transport
            .agent()
            .map_err(|message| RegistryError::Protocol {
                registry: reference.registry.clone(),
                message,
            })?;
        Ok(Repository {
            agent,
            base: format!(
                "{}://{}",
                if plain { "http" } else { "https" },
                reference.registry
            ),
            registry: reference.registry.clone(),
            repository: reference.repository.clone(),
            credential,
            push,
            authorization: None,
            chunk_bytes: transport.chunk_bytes.max(1024),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Sends one request; on a 401 answers the challenge once and resends.
    fn send(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
    ) -> Result<Reply, RegistryError> {
        let mut reply = self.send_once(method, url, headers, body, limit)?;
        if reply.status == 401 {
            let challenge = reply.header("www-authenticate").unwrap_or("").to_string();
            self.authorize(&challenge)?;
            reply = self.send_once(method, url, headers, body, limit)?;
            if reply.status == 401 {
                return Err(self.unauthorized());
            }
        }
        if reply.status == 403 {
            return Err(RegistryError::Denied {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
            });
        }
        Ok(reply)
    }

    fn send_once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        limit: u64,
    ) -> Result<Reply, RegistryError> {
        let mut builder = http::Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(authorization) = &self.authorization {
            builder = builder.header("authorization", authorization);
        }
        let request = builder
            .body(body)
            .map_err(|error| RegistryError::Protocol {
                registry: self.registry.clone(),
                message: error.to_string(),
            })?;
        let mut response = self
            .agent
            .run(request)
            .map_err(|error| RegistryError::Unreachable {
                registry: self.registry.clone(),
                message: error.to_string(),
            })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if method == "HEAD" {
            Vec::new()
        } else {
            response
                .body_mut()
                .with_config()
                .limit(limit)
                .read_to_vec()
                .map_err(|error| RegistryError::Unreachable {
                    registry: self.registry.clone(),
                    message: error.to_string(),
                })?
        };
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            detail: if self.credential.is_none() {
                ": no credentials".into()
            } else {
                String::new()
            },
        }
    }

    /// Answers a `WWW-Authenticate` challenge: basic with the credential, or
    /// a bearer token from the challenge's realm.
    fn authorize(&mut self, challenge: &str) -> Result<(), RegistryError> {
        let (scheme, parameters) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let credential = self
                .credential
                .as_ref()
                .ok_or_else(|| self.unauthorized())?;
            self.authorization = Some(credential.basic_header());
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Protocol {
                registry: self.registry.clone(),
                message: format!("unsupported authentication challenge `{challenge}`"),
            });
        }
        let parameters = challenge_parameters(parameters);
        let get = |name: &str| {
            parameters
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let realm = get("realm").ok_or_else(|| RegistryError::Protocol {
            registry: self.registry.clone(),
            message: format!("bearer challenge without a realm: `{challenge}`"),
        })?;
        let actions = if self.push { "pull,push" } else { "pull" };
        let scope = format!("repository:{}:{actions}", self.repository);
        let mut url = url::Url::parse(realm).map_err(|error| RegistryError::Protocol {
            registry: self.registry.clone(),
            message: format!("bearer realm `{realm}`: {error}"),
        })?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = get("service") {
                query.append_pair("service", service);
            }
            query.append_pair("scope", &scope);
        }
        let mut builder = http::Request::builder().method("GET").uri(url.as_str());
        if let Some(credential) = &self.credential {
            builder = builder.header("authorization", credential.basic_header());
        }
        let request = builder.body(()).map_err(|error| RegistryError::Protocol {
            registry: self.registry.clone(),
            message: error.to_string(),
        })?;
        let mut response = self
            .agent
            .run(request)
            .map_err(|error| RegistryError::Unreachable {
                registry: self.registry.clone(),
                message: format!("token server `{realm}`: {error}"),
            })?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(self.unauthorized());
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_SMALL_BODY)
            .read_to_vec()
            .unwrap_or_default();
        if status != 200 {
            return Err(RegistryError::Status {
                registry: self.registry.clone(),
                action: format!("token request to `{realm}`"),
                status,
                message: String::from_utf8_lossy(&body).trim().to_string(),
            });
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&body).map_err(|error| RegistryError::Protocol {
                registry: self.registry.clone(),
                message: format!("unreadable token answer ({error})"),
            })?;
        let token = answer["token"]
            .as_str()
            .or_else(|| answer["access_token"].as_str())
            .ok_or_else(|| RegistryError::Protocol {
                registry: self.registry.clone(),
                message: "the token answer has no `token`".into(),
            })?;
        self.authorization = Some(format!("Bearer {token}"));
        Ok(())
    }

    fn status_error(&self, action: &str, reply: &Reply) -> RegistryError {
        let text = String::from_utf8_lossy(&reply.body);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| {
                value["errors"][0]["message"].as_str().map(|m| {
                    format!(
                        "{} ({})",
                        m,
                        value["errors"][0]["code"].as_str().unwrap_or("")
                    )
                })
            })
            .unwrap_or_else(|| text.trim().chars().take(300).collect());
        RegistryError::Status {
            registry: self.registry.clone(),
            action: action.to_string(),
            status: reply.status,
            message,
        }
    }

    /// Whether the repository has blob `digest` (HEAD).
    pub fn has_blob(&mut self, digest: &str) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{digest}"));
        let reply = self.send("HEAD", &url, &[], &[], 0)?;
        match reply.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(&format!("HEAD blob `{digest}`"), &reply)),
        }
    }

    /// Blob `digest`, checked against its digest.
    pub fn blob(&mut self, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let mut url = self.url(&format!("blobs/{digest}"));
        let mut reply = self.send("GET", &url, &[], &[], MAX_BLOB)?;
        // Registries with external storage redirect blob reads.
        for _ in 0..3 {
            if !matches!(reply.status, 301 | 302 | 303 | 307 | 308) {
                break;
            }
            url = self.resolve(reply.header("location").unwrap_or_default())?;
            let request = http::Request::builder()
                .method("GET")
                .uri(&url)
                .body(())
                .map_err(|error| RegistryError::Protocol {
                    registry: self.registry.clone(),
                    message: error.to_string(),
                })?;
            let mut response =
                self.agent
                    .run(request)
                    .map_err(|error| RegistryError::Unreachable {
                        registry: self.registry.clone(),
                        message: error.to_string(),
                    })?;
            reply = Reply {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response
                    .body_mut()
                    .with_config()
                    .limit(MAX_BLOB)
                    .read_to_vec()
                    .map_err(|error| RegistryError::Unreachable {
                        registry: self.registry.clone(),
                        message: error.to_string(),
                    })?,
            };
        }
        if reply.status != 200 {
            return Err(self.status_error(&format!("GET blob `{digest}`"), &reply));
        }
        if digest_of(&reply.body) != digest {
            return Err(RegistryError::Protocol {
                registry: self.registry.clone(),
                message: format!("blob `{digest}` arrived with another digest"),
            });
        }
        Ok(reply.body)
    }

    /// The manifest at `reference` (tag or digest): bytes, media type, digest.
    pub fn manifest(
        &mut self,
        reference: &str,
        shown: &str,
    ) -> Result<(Vec<u8>, String, String), RegistryError> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = [
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST,
            media::DOCKER_LIST,
        ]
        .join(", ");
        let reply = self.send("GET", &url, &[("accept", &accept)], &[], MAX_SMALL_BODY)?;
        if reply.status == 404 {
            return Err(RegistryError::NotFound {
                reference: shown.to_string(),
            });
        }
        if reply.status != 200 {
            return Err(self.status_error(&format!("GET manifest `{reference}`"), &reply));
        }
        let body_media = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v["mediaType"].as_str().map(str::to_string));
        let media_type = body_media
            .or_else(|| reply.header("content-type").map(str::to_string))
            .unwrap_or_default();
        let digest = digest_of(&reply.body);
        Ok((reply.body, media_type, digest))
    }

    fn resolve(&self, location: &str) -> Result<String, RegistryError> {
        let base = url::Url::parse(&self.base).map_err(|error| RegistryError::Protocol {
            registry: self.registry.clone(),
            message: error.to_string(),
        })?;
        base.join(location)
            .map(|url| url.to_string())
            .map_err(|error| RegistryError::Protocol {
                registry: self.registry.clone(),
                message: format!("bad upload location `{location}`: {error}"),
            })
    }

    fn location(&self, reply: &Reply, action: &str) -> Result<String, RegistryError> {
        let location = reply
            .header("location")
            .ok_or_else(|| RegistryError::Protocol {
                registry: self.registry.clone(),
                message: format!("{action} answered without a `Location`"),
            })?;
        self.resolve(location)
    }

    fn with_digest(url: &str, digest: &str) -> String {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}digest={}", digest.replace(':', "%3A"))
    }

    /// Makes blob `digest` (of `bytes`) exist in this repository: skipped
    /// when it does (HEAD), mounted from `mount_from` (a repository of the
    /// same registry) when the registry allows, else uploaded, in one PUT
    /// up to the chunk size and in PATCH chunks above it.
    pub fn ensure_blob(
        &mut self,
        digest: &str,
        bytes: &mut dyn FnMut() -> Result<Vec<u8>, RegistryError>,
        mount_from: Option<&str>,
        stats: &mut PushStats,
    ) -> Result<(), RegistryError> {
        if self.has_blob(digest)? {
            stats.blobs_skipped += 1;
            return Ok(());
        }
        let mut start = self.url("blobs/uploads/");
        if let Some(from) = mount_from {
            start = format!("{start}?mount={}&from={from}", digest.replace(':', "%3A"));
        }
        let reply = self.send(
            "POST",
            &start,
            &[("content-length", "0")],
            &[],
            MAX_SMALL_BODY,
        )?;
        if reply.status == 201 && mount_from.is_some() {
            stats.blobs_mounted += 1;
            return Ok(());
        }
        if reply.status != 202 {
            return Err(self.status_error("start a blob upload", &reply));
        }
        let mut location = self.location(&reply, "starting an upload")?;
        let bytes = bytes()?;
        if bytes.len() <= self.chunk_bytes {
            let url = Self::with_digest(&location, digest);
            let length = bytes.len().to_string();
            let reply = self.send(
                "PUT",
                &url,
                &[
                    ("content-type", "application/octet-stream"),
                    ("content-length", &length),
                ],
                &bytes,
                MAX_SMALL_BODY,
            )?;
            if reply.status != 201 {
                return Err(self.status_error(&format!("upload blob `{digest}`"), &reply));
            }
        } else {
            let mut offset = 0;
            while offset < bytes.len() {
                let end = (offset + self.chunk_bytes).min(bytes.len());
                let range = format!("{offset}-{}", end - 1);
                let length = (end - offset).to_string();
                let reply = self.send(
                    "PATCH",
                    &location,
                    &[
                        ("content-type", "application/octet-stream"),
                        ("content-range", &range),
                        ("content-length", &length),
                    ],
                    &bytes[offset..end],
                    MAX_SMALL_BODY,
                )?;
                if reply.status != 202 {
                    return Err(self.status_error(
                        &format!("upload chunk {range} of blob `{digest}`"),
                        &reply,
                    ));
                }
                location = self.location(&reply, "a chunk upload")?;
                offset = end;
            }
            let url = Self::with_digest(&location, digest);
            let reply = self.send("PUT", &url, &[("content-length", "0")], &[], MAX_SMALL_BODY)?;
            if reply.status != 201 {
                return Err(self.status_error(&format!("finish blob `{digest}`"), &reply));
            }
        }
        stats.blobs_pushed += 1;
        stats.bytes_pushed += bytes.len() as u64;
        Ok(())
    }

    /// PUTs a manifest under `tag`; returns the digest the registry reports
    /// (checked against the local one).
    pub fn put_manifest(
        &mut self,
        tag: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<String, RegistryError> {
        let url = self.url(&format!("manifests/{tag}"));
        let length = bytes.len().to_string();
        let reply = self.send(
            "PUT",
            &url,
            &[("content-type", media_type), ("content-length", &length)],
            bytes,
            MAX_SMALL_BODY,
        )?;
        if reply.status != 201 {
            return Err(self.status_error(&format!("PUT manifest `{tag}`"), &reply));
        }
        let digest = digest_of(bytes);
        if let Some(reported) = reply.header("docker-content-digest")
            && reported != digest
        {
            return Err(RegistryError::Protocol {
                registry: self.registry.clone(),
                message: format!(
                    "the registry stored the manifest as `{reported}`, not `{digest}`"
                ),
            });
        }
        Ok(digest)
    }
}

/// `realm="https://auth",service="registry",scope="..."` as pairs.
fn challenge_parameters(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_string();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.split_once('"') {
                Some((value, after)) => (value.to_string(), after),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.split_once(',') {
                Some((value, after)) => (value.trim().to_string(), after),
                None => (after.trim().to_string(), ""),
            }
        };
        out.push((key, value));
        rest = after.trim_start_matches(',').trim();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_does() {
        let r = Reference::parse("127.0.0.1:5000/team/sensor-rpc:1.2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/sensor-rpc", Some("1.2"))
        );
        let r = Reference::parse("sensor-rpc:0.1.0").unwrap();
        assert_eq!(r.registry, DOCKER_HUB);
        assert_eq!(r.repository, "library/sensor-rpc");
        let r = Reference::parse("gcr.io/distroless/cc-debian12:nonroot").unwrap();
        assert_eq!(r.manifest_reference(), "nonroot");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/x@{digest}")).unwrap();
        assert_eq!(r.manifest_reference(), digest);
        assert_eq!(r.by_digest(&digest), format!("localhost/x@{digest}"));
        assert!(Reference::parse("Registry.example/UPPER").is_err());
        assert!(Reference::parse("r.example/x@sha256:short").is_err());
    }

    #[test]
    fn bearer_challenges_split_into_pairs() {
        assert_eq!(
            challenge_parameters(
                r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#
            ),
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
    }
}
