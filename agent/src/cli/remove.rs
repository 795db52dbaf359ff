//! What `rm` and `rmp` share: choosing the targets, stopping running ones only when forced,
//! and going on past a failure while reporting it, as crictl does.

use anyhow::{bail, Result};
use bosun_cri::CriError;

use super::{output, resolve};

/// One object the runtime listed: its ID and whether it is running (ready, for sandboxes).
pub struct Listed {
    pub id: String,
    pub running: bool,
}

/// The objects to remove: all of them, or the ones the prefixes name.
pub fn targets(
    kind: &str,
    all: bool,
    prefixes: &[String],
    listed: Vec<Listed>,
) -> Result<Vec<Listed>> {
    if all {
        return Ok(listed);
    }
    let mut chosen = Vec::new();
    for prefix in prefixes {
        let id = resolve::unique_prefix(kind, prefix, listed.iter().map(|l| l.id.as_str()))?;
        let running = listed.iter().any(|l| l.id == id && l.running);
        chosen.push(Listed { id, running });
    }
    Ok(chosen)
}

/// Removes each target, stopping running ones first when `force` is set; prints `done(id)`
/// for each one removed, reports each failure on stderr and goes on, then fails if any did.
pub async fn remove_each(
    kind: &str,
    targets: Vec<Listed>,
    force: bool,
    stop: impl AsyncFn(&str) -> Result<(), CriError>,
    remove: impl AsyncFn(&str) -> Result<(), CriError>,
    done: impl Fn(&str) -> String,
) -> Result<()> {
    let mut failed = 0;
    for target in targets {
        let id = target.id.as_str();
        let result: Result<()> = async {
            if target.running {
                if !force {
                    bail!("{kind} {id} is running, stop it first or use --force");
                }
                stop(id).await?;
            }
            remove(id).await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => output::print_stdout(&done(id))?,
            Err(e) => {
                eprintln!("bosun: error: removing {kind} {id}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} {kind}(s) could not be removed");
    }
    Ok(())
}
