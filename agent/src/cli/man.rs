//! `bosun man DIR`: the manual pages, written from the same definitions as `--help`, so the
//! two never disagree. The packages install what `./scripts/package.sh` has this write.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _};

/// A daemon run by root: section 8, as other node daemons' pages are.
const SECTION: &str = "8";

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write into (made if missing): bosun.8, and bosun-COMMAND.8 for each
    /// command.
    pub dir: PathBuf,
}

pub fn man(args: &ManArgs) -> Result<()> {
    std::fs::create_dir_all(&args.dir).with_context(|| format!("making {}", args.dir.display()))?;
    let mut command = super::Cli::command().disable_help_subcommand(true);
    // Gives each command its full name (`bosun-run`), which names its page.
    command.build();
    let mut written = Vec::new();
    write_pages(command, &args.dir, &mut written)?;
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

/// Writes the page of `command` and of each command under it that `--help` lists.
fn write_pages(command: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    let page = clap_mangen::Man::new(command.clone())
        .section(SECTION)
        .manual("System Manager's Manual")
        .source(format!("bosun {}", bosun::VERSION));
    let path = dir.join(page.get_filename());
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    page.render(&mut out)
        .and_then(|()| out.flush())
        .with_context(|| format!("writing {}", path.display()))?;
    written.push(path);
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub.clone(), dir, written)?;
    }
    Ok(())
}
