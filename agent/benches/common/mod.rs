//! What the benchmarks share: name filters, sample statistics and the machine's load.

/// min, median, nearest-rank p99 and max of a set of samples.
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        // Nearest rank: the smallest sample at or above the quantile.
        let rank = |q: f64| sorted[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stats {
            n,
            min: sorted[0],
            median,
            p99: rank(0.99),
            max: sorted[n - 1],
        })
    }
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".to_owned())
}

/// How much of a benchmark runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// What the published figures come from.
    Full,
    /// `--quick`: fewer samples and smaller sizes, numbers still worth reading.
    Quick,
    /// `--smoke`: one sample of the smallest size, only to show that the benchmark still runs
    /// from start to end; its numbers mean nothing.
    Smoke,
}

impl Mode {
    /// What a report's first line adds after the benchmark's name.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Full => "",
            Mode::Quick => " (quick)",
            Mode::Smoke => " (smoke: one sample, numbers mean nothing)",
        }
    }
}

/// The arguments every benchmark takes: `--quick`, `--smoke`, `--samples N` and name filters.
pub struct Args {
    pub mode: Mode,
    pub samples: Option<usize>,
    pub filters: Vec<String>,
}

impl Args {
    /// Parses `args`; a flag of one benchmark's own goes to `extra` with the way to read its
    /// value, and `extra` says whether it knew the flag. Filters must match `benchmarks`.
    pub fn parse(
        args: impl Iterator<Item = String>,
        benchmarks: &[&str],
        mut extra: impl FnMut(&str, &mut dyn Iterator<Item = String>) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Args> {
        let mut parsed = Args {
            mode: Mode::Full,
            samples: None,
            filters: Vec::new(),
        };
        let mut args = args;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => parsed.mode = Mode::Quick,
                "--smoke" => parsed.mode = Mode::Smoke,
                // cargo bench passes it to every bench target.
                "--bench" => {}
                "--samples" => parsed.samples = Some(positive("--samples", args.next())?),
                flag if flag.starts_with('-') => {
                    if !extra(flag, &mut args)? {
                        anyhow::bail!("unknown flag {flag:?}");
                    }
                }
                filter => parsed.filters.push(filter.to_owned()),
            }
        }
        check_filters(&parsed.filters, benchmarks)?;
        Ok(parsed)
    }

    /// Whether `benchmark` runs: no filters, or one that its name contains.
    pub fn selected(&self, benchmark: &str) -> bool {
        self.filters.is_empty() || self.filters.iter().any(|f| benchmark.contains(f.as_str()))
    }
}

/// The value of a flag that takes a number of at least 1.
pub fn positive(flag: &str, value: Option<String>) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let value = value.with_context(|| format!("{flag} needs a number"))?;
    let n: usize = value.parse().with_context(|| format!("{flag} {value:?}"))?;
    anyhow::ensure!(n > 0, "{flag} must be at least 1");
    Ok(n)
}

/// Fails on a name filter that matches none of `benchmarks`.
pub fn check_filters(filters: &[String], benchmarks: &[&str]) -> anyhow::Result<()> {
    match filters
        .iter()
        .find(|f| !benchmarks.iter().any(|b| b.contains(f.as_str())))
    {
        Some(unmatched) => anyhow::bail!("{unmatched:?} matches no benchmark"),
        None => Ok(()),
    }
}

/// The kernel's clock tick for `/proc/PID/stat` and `/proc/stat` times (USER_HZ, 100 on every
/// Linux ABI bosun targets).
pub const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// The benchmark `name`'s arguments as `parse` reads them, or `None` when the binary was not
/// run by `cargo bench`: `cargo test --benches` runs it without `--bench`, and a test run
/// must not start nodes, build networks or attach programs. Bad arguments exit with status
/// 2, the error and `usage`.
pub fn bench_args<T>(
    name: &str,
    usage: &str,
    parse: impl FnOnce(std::vec::IntoIter<String>) -> anyhow::Result<T>,
) -> Option<T> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("{name} bench: not run (run it with `cargo bench`)");
        return None;
    }
    match parse(args.into_iter()) {
        Ok(parsed) => Some(parsed),
        Err(e) => {
            eprintln!("{name} bench: {e:#}");
            eprintln!("usage: {name} {usage}");
            std::process::exit(2);
        }
    }
}

/// Exits with status 1 and the error if the benchmark `name` failed.
pub fn exit_on_error(name: &str, result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("{name} bench: error: {e:#}");
        std::process::exit(1);
    }
}
