//! The Lambda package: `bootstrap` (runs `<binary> lambda`) and the binary,
//! zipped reproducibly ([`crate::engine::zip`]: fixed times, the order
//! given), with Lambda's size rules: over 50 MB zipped it goes through S3,
//! over 250 MB unzipped Lambda refuses it.

use super::BuildError;
use crate::engine;

/// Lambda's limit on a zip uploaded in the API request itself.
pub const INLINE_LIMIT_BYTES: u64 = 50 * 1000 * 1000;
/// Lambda's limit on a package's unzipped size.
pub const UNZIPPED_LIMIT_BYTES: u64 = 250 * 1000 * 1000;

/// How the package reaches Lambda.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Upload {
    /// In the `CreateFunction`/`UpdateFunctionCode` request.
    Inline,
    /// Put in the target's bucket first, then named by bucket and key.
    S3,
}

/// The upload for a zip of `zipped` bytes.
pub fn upload_for(zipped: u64) -> Upload {
    if zipped > INLINE_LIMIT_BYTES {
        Upload::S3
    } else {
        Upload::Inline
    }
}

/// The package bytes and its unzipped size; refuses one Lambda would refuse.
pub fn package(binary_name: &str, binary: &[u8]) -> Result<(Vec<u8>, u64), BuildError> {
    let bootstrap = engine::aws::bootstrap(binary_name);
    let unzipped = (bootstrap.len() + binary.len()) as u64;
    if unzipped > UNZIPPED_LIMIT_BYTES {
        return Err(BuildError::PackageTooLarge {
            unzipped,
            limit: UNZIPPED_LIMIT_BYTES,
        });
    }
    let zip = engine::zip::write(&[
        engine::zip::ZipEntry {
            name: "bootstrap",
            contents: bootstrap.as_bytes(),
            mode: 0o755,
        },
        engine::zip::ZipEntry {
            name: binary_name,
            contents: binary,
            mode: 0o755,
        },
    ])
    .map_err(|error| BuildError::Io {
        what: "the Lambda package".into(),
        message: error.to_string(),
    })?;
    Ok((zip, unzipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_reproducible_and_sized_by_lambda_rules() {
        let (first, unzipped) = package("acme", &[1u8; 4096]).unwrap();
        let (second, _) = package("acme", &[1u8; 4096]).unwrap();
        assert_eq!(first, second);
        assert!(unzipped > 4096);
        assert_eq!(upload_for(INLINE_LIMIT_BYTES), Upload::Inline);
        assert_eq!(upload_for(INLINE_LIMIT_BYTES + 1), Upload::S3);
        let huge = vec![0u8; UNZIPPED_LIMIT_BYTES as usize];
        let error = package("acme", &huge).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("over Lambda's limit of 250 MB unzipped"),
            "{error}"
        );
    }
}
