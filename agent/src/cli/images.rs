//! `images`, `inspecti`, `rmi`, `pull`, and `image import` (containerd's own API).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bosun_cri::{api, image_spec, ContainerdClient, CriClient, CRI_NAMESPACE};
use clap::{Args, Subcommand};

use super::output::{self, human_size, short_id, Format, ListOutput, Table};
use super::{resolve, InspectArgs};

/// How long `image import` waits for CRI to list what it imported.
const IMPORT_VISIBLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only images matching this reference.
    pub image: Option<String>,
    /// Show digests.
    #[arg(long)]
    pub digests: bool,
    #[command(flatten)]
    pub list: ListOutput,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Image references, IDs or unique ID prefixes.
    #[arg(required_unless_present = "all")]
    pub images: Vec<String>,
    /// Remove all images.
    #[arg(short = 'a', long, conflicts_with = "images")]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image to pull.
    pub image: String,
    /// Registry credentials as USERNAME[:PASSWORD].
    #[arg(long)]
    pub creds: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image archive (tar or tar.gz) into the runtime's CRI namespace.
    Import {
        /// The archive file.
        file: PathBuf,
    },
}

pub async fn list(client: &CriClient, args: &ImagesArgs) -> Result<()> {
    let filter = args.image.as_deref().map(|image| api::ImageFilter {
        image: Some(image_spec(image)),
    });
    let mut images = client.list_images(filter).await?;
    images.sort_by(|a, b| first_tag(a).cmp(first_tag(b)).then_with(|| a.id.cmp(&b.id)));
    if args.list.quiet {
        let ids: String = images.iter().map(|i| format!("{}\n", i.id)).collect();
        return output::print_stdout(&ids);
    }
    match args.list.output {
        Format::Table => {
            let mut header = vec!["IMAGE", "TAG"];
            if args.digests {
                header.push("DIGEST");
            }
            header.extend(["IMAGE ID", "SIZE"]);
            let mut table = Table::new(&header);
            for image in &images {
                let digest = image
                    .repo_digests
                    .first()
                    .and_then(|d| d.split_once('@'))
                    .map(|(_, d)| short_id(d, args.list.no_trunc))
                    .unwrap_or_else(|| "<none>".to_owned());
                let names: Vec<(String, String)> = if image.repo_tags.is_empty() {
                    vec![("<none>".to_owned(), "<none>".to_owned())]
                } else {
                    image.repo_tags.iter().map(|t| split_tag(t)).collect()
                };
                for (repo, tag) in names {
                    let mut row = vec![repo, tag];
                    if args.digests {
                        row.push(digest.clone());
                    }
                    row.push(short_id(&image.id, args.list.no_trunc));
                    row.push(human_size(image.size));
                    table.row(row);
                }
            }
            table.print()
        }
        format => {
            let response = api::ListImagesResponse { images };
            output::print_value(&output::proto_json(&response)?, format)
        }
    }
}

fn first_tag(image: &api::Image) -> &str {
    image.repo_tags.first().map_or("", String::as_str)
}

/// `repo:tag` → (`repo`, `tag`); a `:` before the last `/` is a registry port.
fn split_tag(reference: &str) -> (String, String) {
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_owned(),
            reference[slash + i + 1..].to_owned(),
        ),
        None => (reference.to_owned(), "<none>".to_owned()),
    }
}

pub async fn inspect(client: &CriClient, args: &InspectArgs) -> Result<()> {
    for name in &args.ids {
        let id = resolve::image(client, name).await?;
        let Some(response) = client.image_status(&id, true).await? else {
            bail!("image {name:?} not found");
        };
        output::print_inspected(response.image.as_ref(), &response.info, args.output)?;
    }
    Ok(())
}

pub async fn remove(client: &CriClient, args: &RmiArgs) -> Result<()> {
    let ids: Vec<String> = if args.all {
        client
            .list_images(None)
            .await?
            .into_iter()
            .map(|i| i.id)
            .collect()
    } else {
        let mut ids = Vec::new();
        for name in &args.images {
            ids.push(resolve::image(client, name).await?);
        }
        ids
    };
    for id in ids {
        client.remove_image(&id).await?;
        output::print_stdout(&format!("Deleted: {id}\n"))?;
    }
    Ok(())
}

pub async fn pull(client: &CriClient, args: &PullArgs) -> Result<()> {
    let auth = args.creds.as_deref().map(|creds| {
        let (username, password) = creds.split_once(':').unwrap_or((creds, ""));
        api::AuthConfig {
            username: username.to_owned(),
            password: password.to_owned(),
            ..Default::default()
        }
    });
    let image_ref = client
        .pull_image(&args.image, auth, None)
        .await
        .with_context(|| format!("pulling image {:?}", args.image))?;
    output::print_stdout(&format!("Image is up to date for {image_ref}\n"))
}

pub async fn image_command(endpoint: &str, command: &ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Import { file } => {
            if !file.is_file() {
                bail!("image archive {}: no such file", file.display());
            }
            let socket = bosun_cri::socket_path(endpoint)?;
            let containerd = ContainerdClient::connect(&socket).await?;
            let imported = containerd.import_oci_archive(CRI_NAMESPACE, file).await?;
            // Done means usable: wait (briefly) until CRI's image cache has caught up.
            let cri = CriClient::connect(endpoint, Duration::from_secs(10)).await?;
            for image in imported {
                if !cri
                    .wait_for_image(&image.name, IMPORT_VISIBLE_TIMEOUT)
                    .await?
                {
                    bail!(
                        "imported {} but the runtime's CRI service does not list it after {}s",
                        image.name,
                        IMPORT_VISIBLE_TIMEOUT.as_secs()
                    );
                }
                output::print_stdout(&format!("Imported {} ({})\n", image.name, image.digest))?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(
            split_tag("docker.io/library/busybox:1.36"),
            ("docker.io/library/busybox".into(), "1.36".into())
        );
        assert_eq!(
            split_tag("myreg:5000/app"),
            ("myreg:5000/app".into(), "<none>".into())
        );
        assert_eq!(
            split_tag("myreg:5000/app:v1"),
            ("myreg:5000/app".into(), "v1".into())
        );
    }
}
