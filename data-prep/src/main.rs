use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use data_prep::archive::ArchiveFormat;
use data_prep::archive::Reject;
use data_prep::convert::{ConvertOptions, convert};
use data_prep::plan::ListFiles;
use data_prep::store::{Codec, StoreOptions, read_rejects};
use data_prep::summary;
use data_prep::synth::{SynthOptions, synth};
use lossbench_core::logging::{self, LogFormat};
use lossbench_core::store::Store;

/// BigEarthNet archive → sharded Zarr v3 store (see docs/store.md).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Convert an archive into a store.
    Convert(ConvertArgs),
    /// Write a synthetic archive in the real on-disk format.
    Synth(SynthArgs),
    /// Print the summary of a finished store.
    Info {
        /// The store folder.
        store: PathBuf,
        /// Also list every rejected patch (tab-separated: patch, file, reason).
        #[arg(long)]
        rejects: bool,
    },
}

#[derive(Args)]
struct ConvertArgs {
    /// The archive as downloaded: BigEarthNet-S2-v1.0.tar.gz or BigEarthNet-S2.tar.zst (any
    /// .tar.gz, .tgz, .tar.zst, .tzst or .tar), read as one stream without unpacking; or an
    /// unpacked folder: v1.0 (patch folders, or the folder holding BigEarthNet-v1.0/) or v2.0
    /// (holding metadata.parquet and BigEarthNet-S2/).
    #[arg(long)]
    archive: PathBuf,
    /// v2.0's metadata.parquet for a packed archive (default: beside the archive file).
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// Patches of a packed archive that may be incomplete at once (their members scattered in
    /// the stream); each holds up to about 173 KB.
    #[arg(long, default_value_t = data_prep::convert::DEFAULT_MAX_PENDING)]
    max_pending_patches: usize,
    /// Store folder to create.
    #[arg(long)]
    out: PathBuf,
    /// Archive format (default: detected).
    #[arg(long, value_enum)]
    format: Option<ArchiveFormat>,
    /// Seasonal-snow list (default: patches_with_seasonal_snow.csv beside the archive, if any).
    #[arg(long)]
    snow_list: Option<PathBuf>,
    /// Cloud-and-shadow list (default: patches_with_cloud_and_shadow.csv beside the archive).
    #[arg(long)]
    cloud_list: Option<PathBuf>,
    /// Train split list; give all three lists or none (default: train.csv / val.csv / test.csv
    /// or bigearthnet-{train,val,test}.csv beside the archive, else v2.0's split column, else a
    /// seeded random 52/24/24 split).
    #[arg(long, requires_all = ["val_list", "test_list"])]
    train_list: Option<PathBuf>,
    #[arg(long, requires_all = ["train_list", "test_list"])]
    val_list: Option<PathBuf>,
    #[arg(long, requires_all = ["train_list", "val_list"])]
    test_list: Option<PathBuf>,
    /// Seed of the random split, used only when no split lists or column exist.
    #[arg(long, default_value_t = 0)]
    split_seed: u64,
    /// Write the good patches and a rejects report instead of stopping at bad input.
    #[arg(long)]
    skip_bad: bool,
    /// Replace an existing store (refused while processes read it, unless --force).
    #[arg(long)]
    overwrite: bool,
    /// With --overwrite: replace the store even while trainers, landscapes or reports read it
    /// (they then stop with an error instead of mixing the two stores' data).
    #[arg(long, requires = "overwrite")]
    force: bool,
    /// Chunk compression.
    #[arg(long, value_enum, default_value_t = Codec::Blosc)]
    codec: Codec,
    /// Compression level (zstd level, also inside blosc).
    #[arg(long, default_value_t = data_prep::store::DEFAULT_LEVEL)]
    level: u8,
    /// Patches per shard.
    #[arg(long, default_value_t = 256)]
    shard_patches: u64,
}

#[derive(Args)]
struct SynthArgs {
    #[arg(long)]
    patches: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, value_enum, default_value_t = ArchiveFormat::V1)]
    format: ArchiveFormat,
    /// Folder to write the archive into.
    #[arg(long)]
    out: PathBuf,
    /// Write the patches as one packed file the way the archive is downloaded
    /// (BigEarthNet-S2-v1.0.<pack> or BigEarthNet-S2.<pack>, members in name order), with the
    /// lists or metadata.parquet beside it, instead of a folder tree.
    #[arg(long, value_enum)]
    pack: Option<data_prep::synth::Pack>,
    /// Replace an archive, lists or metadata.parquet already in --out under the names synth
    /// writes (refused otherwise; nothing else there is touched).
    #[arg(long)]
    overwrite: bool,
}

impl ConvertArgs {
    /// The conversion these flags ask for.
    fn options(self) -> Result<ConvertOptions> {
        if self.shard_patches == 0 {
            bail!("--shard-patches must be at least 1");
        }
        if self.max_pending_patches == 0 {
            bail!("--max-pending-patches must be at least 1");
        }
        let splits = match (self.train_list, self.val_list, self.test_list) {
            (Some(t), Some(v), Some(s)) => Some([t, v, s]),
            _ => None,
        };
        Ok(ConvertOptions {
            archive: self.archive,
            out: self.out,
            format: self.format,
            lists: ListFiles {
                snow: self.snow_list,
                cloud: self.cloud_list,
                splits,
            },
            metadata: self.metadata,
            split_seed: self.split_seed,
            skip_bad: self.skip_bad,
            overwrite: self.overwrite,
            force: self.force,
            store: StoreOptions {
                codec: self.codec,
                level: self.level,
                shard_patches: self.shard_patches,
            },
            max_pending: self.max_pending_patches,
        })
    }
}

fn convert_command(a: ConvertArgs) -> Result<()> {
    let opts = a.options()?;
    let started = std::time::Instant::now();
    let outcome = convert(&opts)?;
    let secs = started.elapsed().as_secs_f64();
    print!("{}", summary::render(&opts.out, &outcome.attrs));
    let written: u64 = outcome.attrs.accounting.written.values().sum();
    let rate = written as f64 / secs;
    println!("\nconverted {written} patches in {secs:.1} s ({rate:.0} patches/s)");
    if !outcome.rejects.is_empty() {
        println!(
            "\nrejected patches (also in the store's `rejects` group; `data-prep info --rejects`):"
        );
        print_rejects(&outcome.rejects, 50);
    }
    Ok(())
}

fn synth_command(a: SynthArgs) -> Result<()> {
    let (format, out) = (a.format, a.out.clone());
    let s = synth(&SynthOptions {
        patches: a.patches,
        seed: a.seed,
        format,
        out,
        pack: a.pack,
        overwrite: a.overwrite,
    })?;
    let [train, val, test] = s.per_split;
    println!(
        "wrote {} synthetic patches ({format}) to {}: {} snowy, {} cloudy, {} without a 19-class \
         label; train/validation/test {train}/{val}/{test}",
        s.patches,
        s.path.display(),
        s.snow,
        s.cloud,
        s.no_label,
    );
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    if let Some(n) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("starting the thread pool")?;
    }
    match cli.command {
        Command::Convert(a) => convert_command(a)?,
        Command::Synth(a) => synth_command(a)?,
        Command::Info { store, rejects } => {
            let s = Store::open(&store)?;
            print!("{}", summary::render(&store, &s.attrs));
            if rejects {
                println!("\nrejected patches");
                print_rejects(&read_rejects(&store)?, usize::MAX);
            }
        }
    }
    Ok(())
}

fn print_rejects(rejects: &[Reject], at_most: usize) {
    println!("patch\tfile\treason");
    for r in rejects.iter().take(at_most) {
        println!("{}\t{}\t{}", r.patch, r.file.display(), r.reason);
    }
    if rejects.len() > at_most {
        println!("... and {} more", rejects.len() - at_most);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format, "info");
    logging::exit_code(run(cli).map(|()| ExitCode::SUCCESS))
}
