#!/usr/bin/env bash
# The issue's 1 GB externalized fetch: a 1 GiB object in SeaweedFS, fetched by
# kit-service's fetch client with one GET and with parallel ranges, same run.
# Usage: bash bench/fetch-seaweedfs.sh [SIZE_MIB]   (needs the venv of .ci/lib.sh)
source "$(dirname "$0")/../.ci/lib.sh"
cd "$ROOT"
size_mib=${1:-1024}
ensure_python
ensure_seaweedfs
trap stop_services EXIT
work=$(mktemp -d)
start_seaweedfs "$work"
cargo build --release -q -p kit-bench
url=$("$PY" - "$KIT_TEST_S3_ENDPOINT" "$size_mib" <<'PY'
import os, sys, boto3
endpoint, size = sys.argv[1], int(sys.argv[2])
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(signature_version="s3v4"))
s3.create_bucket(Bucket="bench")
chunk = os.urandom(8 << 20)
upload = s3.create_multipart_upload(Bucket="bench", Key="vgi-rpc/bench.arrow")
parts = []
for number in range(1, size // 8 + 1):
    part = s3.upload_part(Bucket="bench", Key="vgi-rpc/bench.arrow", PartNumber=number, UploadId=upload["UploadId"], Body=chunk)
    parts.append({"PartNumber": number, "ETag": part["ETag"]})
s3.complete_multipart_upload(Bucket="bench", Key="vgi-rpc/bench.arrow", UploadId=upload["UploadId"], MultipartUpload={"Parts": parts})
print(s3.generate_presigned_url("get_object", Params={"Bucket": "bench", "Key": "vgi-rpc/bench.arrow"}, ExpiresIn=3600))
PY
)
log "fetching ${size_mib} MiB from SeaweedFS"
"$CARGO_TARGET_DIR/release/kit-bench" fetch "$url"
rm -rf "$work"
