//! A minimal, deterministic zip writer for function packages (Lambda's
//! `bootstrap` plus the service binary).
//!
//! Hand-written rather than a crate because it needs three things only:
//! deflate (flate2, already a dependency), Unix modes (`bootstrap` must be
//! executable) and a fixed timestamp, so the same inputs give the same bytes
//! and the same code hash, which keeps a second `up` from updating the code.

use std::io::Write;

use flate2::Compression;
use flate2::write::DeflateEncoder;

/// One file in the archive.
#[derive(Debug, Clone)]
pub struct ZipEntry<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
    /// Unix permission bits (`0o755` for executables).
    pub mode: u32,
}

/// 1980-01-01 00:00, the earliest DOS date: fixed so archives are reproducible.
const DOS_TIME: u16 = 0;
const DOS_DATE: u16 = (1 << 5) | 1;

/// The archive bytes: deflated entries, a central directory, no zip64
/// (Lambda's direct upload caps packages at 50 MB anyway).
pub fn write(entries: &[ZipEntry<'_>]) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for entry in entries {
        let mut crc = flate2::Crc::new();
        crc.update(entry.contents);
        let crc = crc.sum();
        let mut encoder = DeflateEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(entry.contents)?;
        let compressed = encoder.finish()?;
        let too_big = |n: usize| {
            u32::try_from(n).map_err(|_| {
                std::io::Error::other(format!(
                    "`{}` is too large for a zip without zip64",
                    entry.name
                ))
            })
        };
        let compressed_size = too_big(compressed.len())?;
        let size = too_big(entry.contents.len())?;
        let offset = too_big(out.len())?;
        let name = entry.name.as_bytes();
        let name_len = u16::try_from(name.len()).map_err(std::io::Error::other)?;
        // Local file header.
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&20u16.to_le_bytes()); // version needed
        out.extend_from_slice(&0u16.to_le_bytes()); // flags
        out.extend_from_slice(&8u16.to_le_bytes()); // deflate
        out.extend_from_slice(&DOS_TIME.to_le_bytes());
        out.extend_from_slice(&DOS_DATE.to_le_bytes());
        out.extend_from_slice(&crc.to_le_bytes());
        out.extend_from_slice(&compressed_size.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes()); // extra length
        out.extend_from_slice(name);
        out.extend_from_slice(&compressed);
        // Central directory entry; "made by" Unix (3) so the mode is honoured.
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&((3u16 << 8) | 20).to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes());
        central.extend_from_slice(&8u16.to_le_bytes());
        central.extend_from_slice(&DOS_TIME.to_le_bytes());
        central.extend_from_slice(&DOS_DATE.to_le_bytes());
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&compressed_size.to_le_bytes());
        central.extend_from_slice(&size.to_le_bytes());
        central.extend_from_slice(&name_len.to_le_bytes());
        central.extend_from_slice(&0u16.to_le_bytes()); // extra
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal attributes
        central.extend_from_slice(&((0o100_000 | entry.mode) << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name);
    }
    let count = u16::try_from(entries.len()).map_err(std::io::Error::other)?;
    let central_offset = u32::try_from(out.len()).map_err(std::io::Error::other)?;
    let central_size = u32::try_from(central.len()).map_err(std::io::Error::other)?;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&central_size.to_le_bytes());
    out.extend_from_slice(&central_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_bytes_and_python_can_read_it() {
        let entries = [
            ZipEntry {
                name: "bootstrap",
                contents: b"#!/bin/sh\nexec ./kit-service lambda\n",
                mode: 0o755,
            },
            ZipEntry {
                name: "kit-service",
                contents: &[7u8; 10_000],
                mode: 0o755,
            },
        ];
        let first = write(&entries).unwrap();
        assert_eq!(first, write(&entries).unwrap());
        assert!(first.len() < 1_000, "deflated: {}", first.len());
        // Cross-check with an independent reader when one is on this machine.
        let Ok(python) = which_python() else { return };
        let dir = std::env::temp_dir().join(format!("deploy-kit-zip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("package.zip");
        std::fs::write(&path, &first).unwrap();
        let output = std::process::Command::new(python)
            .arg("-c")
            .arg("import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None; print(*[f'{i.filename}:{i.external_attr >> 16:o}:{len(z.read(i))}' for i in z.infolist()])")
            .arg(&path)
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(output.status.success(), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "bootstrap:100755:36 kit-service:100755:10000"
        );
    }

    fn which_python() -> Result<&'static str, ()> {
        ["python3", "python"]
            .into_iter()
            .find(|p| std::process::Command::new(p).arg("-V").output().is_ok())
            .ok_or(())
    }
}
