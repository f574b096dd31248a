//! What a service binary is, read from its ELF file alone: the machine it
//! runs on, the newest glibc symbol version it needs, and whether it was
//! built with kit-service's `lambda` feature. Read, never run, so a binary
//! built for another architecture is judged the same way.

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, SectionHeader};

use crate::config::Architecture;

/// A `GLIBC_x.y` version, compared as numbers (`2.34 < 2.4` would be wrong as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GlibcVersion {
    pub major: u32,
    pub minor: u32,
}

impl GlibcVersion {
    /// The glibc of Lambda's `provided.al2023` runtime.
    pub const LAMBDA: GlibcVersion = GlibcVersion {
        major: 2,
        minor: 34,
    };

    /// `GLIBC_2.34` -> 2.34; other version names (`GLIBC_PRIVATE`, `GCC_3.0`) -> `None`.
    pub fn parse(name: &str) -> Option<GlibcVersion> {
        let (major, minor) = name.strip_prefix("GLIBC_")?.split_once('.')?;
        let minor = minor.split('.').next()?;
        Some(GlibcVersion {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl std::fmt::Display for GlibcVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What [`inspect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfFacts {
    /// `e_machine` (`EM_X86_64`, `EM_AARCH64`, ...).
    pub machine: u16,
    /// The newest `GLIBC_x.y` in the version needs; `None` for a static binary.
    pub glibc: Option<GlibcVersion>,
    /// [`LAMBDA_MARKER`] is in the file: built with the `lambda` feature.
    pub lambda_feature: bool,
}

/// Why a file could not be read as a 64-bit little-endian ELF executable.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ElfError(String);

/// The marker bytes kit-service keeps in every binary built with its `lambda` feature.
pub const LAMBDA_MARKER: &[u8] = kit_service::host::LAMBDA_FEATURE_MARKER;

/// Reads `bytes` as an ELF file.
pub fn inspect(bytes: &[u8]) -> Result<ElfFacts, ElfError> {
    let file = ElfFile64::<object::Endianness>::parse(bytes)
        .map_err(|error| ElfError(format!("not a 64-bit ELF file ({error})")))?;
    let endian = file.endian();
    let header = file.elf_header();
    let machine = header.e_machine(endian);
    let sections = file.elf_section_table();
    let mut glibc = None;
    for section in sections.iter() {
        let Some((mut needs, link)) = section
            .gnu_verneed(endian, bytes)
            .map_err(|error| ElfError(format!("unreadable version needs ({error})")))?
        else {
            continue;
        };
        let strings = sections
            .strings(endian, bytes, link)
            .map_err(|error| ElfError(format!("unreadable version strings ({error})")))?;
        while let Some((_, mut auxes)) = needs
            .next()
            .map_err(|error| ElfError(format!("unreadable version need ({error})")))?
        {
            while let Some(aux) = auxes
                .next()
                .map_err(|error| ElfError(format!("unreadable version need ({error})")))?
            {
                let name = aux
                    .name(endian, strings)
                    .map_err(|error| ElfError(format!("unreadable version name ({error})")))?;
                if let Some(version) = GlibcVersion::parse(&String::from_utf8_lossy(name)) {
                    glibc = glibc.max(Some(version));
                }
            }
        }
    }
    Ok(ElfFacts {
        machine,
        glibc,
        lambda_feature: contains(bytes, LAMBDA_MARKER),
    })
}

/// The `e_machine` of `architecture`.
pub fn machine_of(architecture: Architecture) -> u16 {
    match architecture {
        Architecture::X86_64 => elf::EM_X86_64,
        Architecture::Arm64 => elf::EM_AARCH64,
    }
}

/// How errors name an `e_machine`.
pub fn machine_name(machine: u16) -> String {
    match machine {
        elf::EM_X86_64 => "x86_64".into(),
        elf::EM_AARCH64 => "arm64 (aarch64)".into(),
        elf::EM_386 => "x86 (32-bit)".into(),
        elf::EM_ARM => "arm (32-bit)".into(),
        elf::EM_RISCV => "riscv".into(),
        other => format!("machine {other}"),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut start = 0;
    while let Some(offset) = haystack[start..].iter().position(|&b| b == first) {
        let at = start + offset;
        if haystack[at + 1..].starts_with(rest) {
            return true;
        }
        start = at + 1;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_compare_as_numbers() {
        let parse = |s| GlibcVersion::parse(s).unwrap();
        assert!(parse("GLIBC_2.4") < parse("GLIBC_2.34"));
        assert!(parse("GLIBC_2.35") > GlibcVersion::LAMBDA);
        assert_eq!(parse("GLIBC_2.2.5").to_string(), "2.2");
        assert_eq!(GlibcVersion::parse("GLIBC_PRIVATE"), None);
        assert_eq!(GlibcVersion::parse("GCC_3.0"), None);
    }

    #[test]
    fn the_running_test_binary_is_an_elf_for_this_machine() {
        let bytes = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let facts = inspect(&bytes).unwrap();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(facts.machine, elf::EM_X86_64);
        assert!(
            facts.glibc.is_some(),
            "a glibc test binary needs GLIBC_ versions"
        );
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        let error = inspect(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(
            error.to_string().contains("not a 64-bit ELF file"),
            "{error}"
        );
    }

    #[test]
    fn the_marker_is_found_anywhere() {
        assert!(contains(
            b"xxkit-service:lambda-runtime:v1yy",
            LAMBDA_MARKER
        ));
        assert!(!contains(b"kit-service:lambda-runtime:v", LAMBDA_MARKER));
        assert!(contains(b"kkkit-service:lambda-runtime:v1", LAMBDA_MARKER));
    }
}
