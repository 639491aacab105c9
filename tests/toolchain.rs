//! The oldest Rust the project promises (`rust-version` in Cargo.toml, "1.88 or later" in the
//! README) is one every locked dependency built for this platform accepts. clippy's
//! `incompatible_msrv` lint, which reads the same `rust-version`, holds the project's own code
//! to it.

use serde::Deserialize;
use std::path::Path;
use std::process::Command;

/// A `major.minor[.patch]` version, compared numerically.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text.split('.').map(|part| {
        part.parse::<u64>()
            .unwrap_or_else(|_| panic!("{text:?} is not a Rust version"))
    });
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// The platform rustc builds for by default, from `rustc -vV`.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let output = Command::new(rustc)
        .arg("-vV")
        .output()
        .expect("rustc -vV runs");
    let text = String::from_utf8(output.stdout).expect("rustc -vV prints UTF-8");
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("rustc -vV names its host")
        .to_owned()
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn promised() -> String {
    #[derive(Deserialize)]
    struct Manifest {
        package: Package,
    }
    #[derive(Deserialize)]
    struct Package {
        #[serde(rename = "rust-version")]
        rust_version: String,
    }
    let text = std::fs::read_to_string(manifest_dir().join("Cargo.toml")).expect("Cargo.toml");
    let manifest: Manifest = toml::from_str(&text).expect("Cargo.toml parses");
    manifest.package.rust_version
}

#[test]
fn the_readme_promises_the_rust_version_cargo_toml_declares() {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).expect("README.md");
    let claim = format!("({} or later)", promised());
    assert!(readme.contains(&claim), "the README should say {claim:?}");
}

#[test]
fn no_locked_dependency_needs_a_newer_rust_than_the_one_promised() {
    #[derive(Deserialize)]
    struct Metadata {
        packages: Vec<Package>,
    }
    #[derive(Deserialize)]
    struct Package {
        name: String,
        version: String,
        rust_version: Option<String>,
    }
    // Only this platform's dependencies: the others (Windows' console crates, say) need not
    // have been downloaded, and --offline keeps the test off the network.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(manifest_dir())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Metadata = serde_json::from_slice(&output.stdout).expect("cargo metadata's JSON");

    let promised = promised();
    let too_new: Vec<String> = metadata
        .packages
        .iter()
        .filter_map(|package| {
            let needs = package.rust_version.as_deref()?;
            (version(needs) > version(&promised))
                .then(|| format!("{} {} needs {needs}", package.name, package.version))
        })
        .collect();
    assert!(
        too_new.is_empty(),
        "rust-version is {promised}, but {too_new:?}"
    );
}
