//! A target's `region:` checked when the config loads, before anything
//! changes: a typo (`us-esat-1`) would otherwise reach the cloud as an
//! endpoint that does not resolve, or create a bucket in the wrong place.
//!
//! Each cloud's regions have a shape; a name of that shape that is not in
//! the list below is accepted (clouds add regions), unless it is one or two
//! edits from a listed one, which is taken for a typo of it.

use kit_checks::platform::Platform;

/// AWS commercial, GovCloud and China regions (2026).
const AWS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
];

/// Google Cloud regions (2026).
const GCP: &[&str] = &[
    "africa-south1",
    "asia-east1",
    "asia-east2",
    "asia-northeast1",
    "asia-northeast2",
    "asia-northeast3",
    "asia-south1",
    "asia-south2",
    "asia-southeast1",
    "asia-southeast2",
    "australia-southeast1",
    "australia-southeast2",
    "europe-central2",
    "europe-north1",
    "europe-north2",
    "europe-southwest1",
    "europe-west1",
    "europe-west10",
    "europe-west12",
    "europe-west2",
    "europe-west3",
    "europe-west4",
    "europe-west6",
    "europe-west8",
    "europe-west9",
    "me-central1",
    "me-central2",
    "me-west1",
    "northamerica-northeast1",
    "northamerica-northeast2",
    "northamerica-south1",
    "southamerica-east1",
    "southamerica-west1",
    "us-central1",
    "us-east1",
    "us-east4",
    "us-east5",
    "us-south1",
    "us-west1",
    "us-west2",
    "us-west3",
    "us-west4",
];

/// Azure regions (the `az account list-locations` names most used).
const AZURE: &[&str] = &[
    "australiaeast",
    "australiasoutheast",
    "brazilsouth",
    "canadacentral",
    "canadaeast",
    "centralindia",
    "centralus",
    "eastasia",
    "eastus",
    "eastus2",
    "francecentral",
    "germanywestcentral",
    "italynorth",
    "japaneast",
    "japanwest",
    "koreacentral",
    "northcentralus",
    "northeurope",
    "norwayeast",
    "polandcentral",
    "southafricanorth",
    "southcentralus",
    "southeastasia",
    "southindia",
    "spaincentral",
    "swedencentral",
    "switzerlandnorth",
    "uaenorth",
    "uksouth",
    "ukwest",
    "westcentralus",
    "westeurope",
    "westus",
    "westus2",
    "westus3",
];

/// The directions AWS region names use.
const AWS_DIRECTIONS: &[&str] = &[
    "east",
    "west",
    "north",
    "south",
    "central",
    "northeast",
    "northwest",
    "southeast",
    "southwest",
];

/// Checks `region` for `platform`; the error says what is wrong and, for a
/// typo, which region was meant.
pub fn check(platform: Platform, region: &str) -> Result<(), String> {
    let (cloud, known, shaped): (&str, &[&str], bool) = match platform {
        Platform::AwsLambdaApiGateway | Platform::AwsLambdaFunctionUrl => {
            ("an AWS", AWS, aws_shaped(region))
        }
        Platform::CloudRun | Platform::CloudFunctions => {
            ("a Google Cloud", GCP, gcp_shaped(region))
        }
        Platform::AzureFunctions => ("an Azure", AZURE, azure_shaped(region)),
        _ => return Ok(()),
    };
    if known.contains(&region) {
        return Ok(());
    }
    let nearest = known
        .iter()
        .map(|k| (edit_distance(region, k), *k))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    match (nearest, shaped) {
        (Some((_, meant)), _) => Err(format!(
            "`region: {region}` is not {cloud} region; did you mean `{meant}`?"
        )),
        (None, true) => Ok(()),
        (None, false) => Err(format!(
            "`region: {region}` is not {cloud} region (such as `{}`)",
            known[known.len() / 2]
        )),
    }
}

/// `us-east-1`, `us-gov-west-1`, `ap-southeast-5`.
fn aws_shaped(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    let (area, rest) = match parts.as_slice() {
        [area, "gov", direction, number] => (area, [*direction, *number]),
        [area, direction, number] => (area, [*direction, *number]),
        _ => return false,
    };
    area.len() == 2
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && AWS_DIRECTIONS.contains(&rest[0])
        && !rest[1].is_empty()
        && rest[1].bytes().all(|b| b.is_ascii_digit())
}

/// `europe-west1`, `us-central1`.
fn gcp_shaped(region: &str) -> bool {
    let Some((area, rest)) = region.split_once('-') else {
        return false;
    };
    let digits = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
    !area.is_empty()
        && area.bytes().all(|b| b.is_ascii_lowercase())
        && digits.len() < rest.len()
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `westeurope`, `eastus2`.
fn azure_shaped(region: &str) -> bool {
    !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && region.as_bytes()[0].is_ascii_lowercase()
}

/// Levenshtein distance (the names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_and_new_well_shaped_regions_pass() {
        assert_eq!(check(Platform::AwsLambdaFunctionUrl, "eu-west-1"), Ok(()));
        assert_eq!(
            check(Platform::AwsLambdaFunctionUrl, "us-gov-west-1"),
            Ok(())
        );
        // Not listed, far from every listed one, the right shape: a new region.
        assert_eq!(check(Platform::AwsLambdaFunctionUrl, "nz-north-4"), Ok(()));
        assert_eq!(check(Platform::CloudRun, "europe-west1"), Ok(()));
        assert_eq!(check(Platform::AzureFunctions, "westeurope"), Ok(()));
        // Other platforms' regions are the platform's business.
        assert_eq!(check(Platform::Fly, "ams"), Ok(()));
    }

    #[test]
    fn typos_name_the_region_meant() {
        assert_eq!(
            check(Platform::AwsLambdaFunctionUrl, "us-esat-1"),
            Err("`region: us-esat-1` is not an AWS region; did you mean `us-east-1`?".into())
        );
        let error = check(Platform::CloudRun, "europe-wets1").unwrap_err();
        assert!(error.ends_with("did you mean `europe-west1`?"), "{error}");
        let error = check(Platform::AzureFunctions, "westeurop").unwrap_err();
        assert!(error.ends_with("did you mean `westeurope`?"), "{error}");
    }

    #[test]
    fn other_clouds_names_are_refused() {
        // A GCP name on an AWS target, and the reverse.
        let error = check(Platform::AwsLambdaFunctionUrl, "europe-west1").unwrap_err();
        assert!(error.contains("is not an AWS region"), "{error}");
        let error = check(Platform::CloudRun, "eu-west-1").unwrap_err();
        assert!(error.contains("is not a Google Cloud region"), "{error}");
    }
}
