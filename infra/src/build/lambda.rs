//! The Lambda package: `bootstrap` (runs `<binary> lambda`) and the binary,
//! zipped reproducibly ([`crate::engine::zip`]: fixed times, the order
//! given), with Lambda's size rules: over 50 MB zipped it goes through S3,
//! over 250 MB unzipped Lambda refuses it.

use super::BuildError;
use crate::engine;

/// Lambda's limit on a zip uploaded in the API request itself: a bigger
/// one is put in deploy-kit's artifact bucket and named by bucket and key.
pub const INLINE_LIMIT_BYTES: u64 = 50 * 1000 * 1000;
/// Lowers [`INLINE_LIMIT_BYTES`] (tests send a small package through S3
/// without making a 50 MB zip); a value above Lambda's limit is refused.
pub const INLINE_LIMIT_VARIABLE: &str = "DEPLOY_KIT_LAMBDA_INLINE_LIMIT_BYTES";
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

/// The inline limit in force: [`INLINE_LIMIT_BYTES`], or the lower value
/// of [`INLINE_LIMIT_VARIABLE`].
pub fn inline_limit(env: &dyn Fn(&str) -> Option<String>) -> Result<u64, String> {
    let Some(text) = env(INLINE_LIMIT_VARIABLE).filter(|text| !text.is_empty()) else {
        return Ok(INLINE_LIMIT_BYTES);
    };
    match text.trim().parse::<u64>() {
        Ok(limit) if limit <= INLINE_LIMIT_BYTES => Ok(limit),
        _ => Err(format!(
            "`{INLINE_LIMIT_VARIABLE}` is `{text}`, and must be a number of bytes up to Lambda's {INLINE_LIMIT_BYTES}"
        )),
    }
}

/// The upload for a zip of `zipped` bytes under the inline limit `limit`.
///
/// ```
/// use deploy_kit::build::lambda::{INLINE_LIMIT_BYTES, Upload, upload_for};
/// assert_eq!(upload_for(1_000, INLINE_LIMIT_BYTES), Upload::Inline);
/// assert_eq!(upload_for(INLINE_LIMIT_BYTES + 1, INLINE_LIMIT_BYTES), Upload::S3);
/// ```
pub fn upload_for(zipped: u64, limit: u64) -> Upload {
    if zipped > limit {
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
    fn the_inline_limit_may_only_be_lowered() {
        assert_eq!(inline_limit(&|_| None), Ok(INLINE_LIMIT_BYTES));
        assert_eq!(inline_limit(&|_| Some("1024".into())), Ok(1024));
        let error = inline_limit(&|_| Some("60000000".into())).unwrap_err();
        assert!(
            error.contains("DEPLOY_KIT_LAMBDA_INLINE_LIMIT_BYTES"),
            "{error}"
        );
        assert!(inline_limit(&|_| Some("lots".into())).is_err());
    }

    #[test]
    fn packages_are_reproducible_and_sized_by_lambda_rules() {
        let (first, unzipped) = package("acme", &[1u8; 4096]).unwrap();
        let (second, _) = package("acme", &[1u8; 4096]).unwrap();
        assert_eq!(first, second);
        assert!(unzipped > 4096);
        assert_eq!(
            upload_for(INLINE_LIMIT_BYTES, INLINE_LIMIT_BYTES),
            Upload::Inline
        );
        assert_eq!(
            upload_for(INLINE_LIMIT_BYTES + 1, INLINE_LIMIT_BYTES),
            Upload::S3
        );
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
