//! `bosun-image`: writes bosun's OCI image archive from a release binary, with the same
//! writer as the test images (no container daemon, no registry). `./scripts/package.sh` runs
//! it; the archive imports with `ctr -n k8s.io images import` and pushes with any registry tool
//! that reads an OCI layout archive (skopeo `oci-archive:`, crane, regctl).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Writes bosun's OCI image archive from a release binary")]
struct Cli {
    /// The bosun binary to put in the image.
    #[arg(long)]
    binary: PathBuf,
    /// The full reference the archive names the image with; repeated, the image gets each
    /// (`ctr images import` makes an image of each name).
    #[arg(long = "reference", required = true)]
    references: Vec<String>,
    /// Where to write the archive.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (reference, aliases) = cli
        .references
        .split_first()
        .context("no --reference: the image needs a name")?;
    let archive = bosun_tests::images::build_bosun_image(&cli.binary, reference, aliases, &cli.out)
        .with_context(|| format!("writing the image of {}", cli.binary.display()))?;
    for name in std::iter::once(&archive.reference).chain(&archive.aliases) {
        println!(
            "{} {name} {}",
            archive.path.display(),
            archive.manifest_digest
        );
    }
    Ok(())
}
