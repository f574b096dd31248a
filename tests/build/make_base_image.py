"""Writes an OCI image layout of a minimal glibc base image, from Debian
packages unpacked with `dpkg -x` (libc6, libgcc-s1, ca-certificates), for
`deploy-kit build`'s tests: no public registry is reachable in CI, so the
base image is made here and pushed to the loopback registry with skopeo.

Usage: python make_base_image.py ROOTFS_DIR OCI_LAYOUT_DIR TAG
The layer is reproducible: sorted entries, mtime 0, owner root.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile


def add_files(rootfs: str) -> None:
    """What a distroless `cc` image has beyond the packages' files."""
    os.makedirs(os.path.join(rootfs, "etc/ssl/certs"), exist_ok=True)
    os.makedirs(os.path.join(rootfs, "tmp"), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    bundle = []
    mozilla = os.path.join(rootfs, "usr/share/ca-certificates/mozilla")
    for name in sorted(os.listdir(mozilla)):
        with open(os.path.join(mozilla, name), "rb") as f:
            bundle.append(f.read())
    with open(os.path.join(rootfs, "etc/ssl/certs/ca-certificates.crt"), "wb") as f:
        f.write(b"".join(bundle))
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\nnonroot:x:65532:\n")


def layer_tar(rootfs: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        paths = []
        for directory, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs + files):
                paths.append(os.path.join(directory, name))
        for path in sorted(paths):
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return out.getvalue()


def write_blob(layout: str, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(layout, "blobs/sha256"), exist_ok=True)
    with open(os.path.join(layout, "blobs/sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def main() -> None:
    rootfs, layout, tag = sys.argv[1:4]
    add_files(rootfs)
    tar = layer_tar(rootfs)
    gz = gzip.compress(tar, mtime=0)
    layer_digest = write_blob(layout, gz)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
                   "Labels": {"org.opencontainers.image.description": "deploy-kit test base: libc6, libgcc-s1, ca-certificates"}},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "dpkg -x libc6 libgcc-s1 ca-certificates"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_digest = write_blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": len(gz)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    manifest_digest = write_blob(layout, manifest_bytes)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": len(manifest_bytes), "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    print(manifest_digest)


if __name__ == "__main__":
    main()
