//! bench/bigdata: inference jobs over input sets far larger than what a
//! node should hold, on 3 nodes. For each model and set size, a fresh
//! cluster stores the set (an `.npy` written here, streamed: this process
//! never holds it either), runs a looping job over it for `--seconds`
//! after a warm-up, and samples every node's resident memory throughout.
//! Printed per case: each node's RSS when idle (fresh, before anything was
//! stored) and its peak while the job ran, the peak above idle (target ≤
//! 400 MB whatever the set's size), and queries/s against the same job
//! over the smallest set of the run (target ≥ 0.9). Every size runs
//! `--rounds` times in alternating order and the ratio is of the medians.
//!
//! With `--train-mb N`, also a training (MLP, 3 workers) over N MB of
//! MNIST-sized images (28×28 bytes, IDX) for `--seconds`: every member's
//! peak RSS (target ≤ 500 MB) and steps/s.
//!
//! `cargo run --release -p idunno-bench --bin bigdata -- --sizes-mb 100,1000,5000 --train-mb 3000`
//! `cargo run --release -p idunno-bench --bin bigdata -- --only tiny --sizes-mb 100,1000 --seconds 20`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use idunno_bench::{cli_json, cluster, rss_mib};

#[derive(Parser)]
struct Args {
    /// Input set sizes, in MB (10^6 bytes), smallest first: the first is
    /// the baseline of the queries/s ratio.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
    sizes_mb: Vec<u64>,
    /// Seconds the job is measured for, after a warm-up of a quarter of it.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Only the models whose name contains this (tiny, efficientnet).
    #[arg(long)]
    only: Option<String>,
    /// Where the generated sets are written (each is deleted after use).
    #[arg(long, default_value = "/var/tmp")]
    scratch: PathBuf,
    /// A node config for every node (TOML), e.g. to set `[worker] cache_mb`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// MB of images for the training case (0: none).
    #[arg(long, default_value_t = 0)]
    train_mb: u64,
    /// Rounds of every size, in alternating order (smallest first, then
    /// largest first, ...): this machine's speed drifts over minutes, so
    /// each size's rate is the median of its rounds.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

struct Model {
    name: &'static str,
    file: &'static str,
    /// One sample's shape (f32).
    sample: &'static [usize],
    batch: u32,
}

const MODELS: &[Model] = &[
    Model { name: "tiny", file: "models/tiny-add.onnx", sample: &[16], batch: 1000 },
    Model { name: "efficientnet", file: "models/efficientnet-lite0.onnx", sample: &[3, 224, 224], batch: 8 },
];

/// Write an `.npy` of `rows` samples of `sample` f32 values (a cheap
/// pseudo-random sequence), a block at a time.
fn write_set(path: &Path, rows: usize, sample: &[usize]) -> std::io::Result<u64> {
    let shape: Vec<usize> = std::iter::once(rows).chain(sample.iter().copied()).collect();
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(path)?);
    f.write_all(&idunno_ml::npy::header("<f4", &shape))?;
    let per_row: usize = sample.iter().product();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = Vec::with_capacity(4 << 20);
    let total = rows * per_row;
    let mut done = 0;
    while done < total {
        block.clear();
        let n = (total - done).min(1 << 20);
        for _ in 0..n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&(((x >> 40) as f32) / (1u64 << 24) as f32 - 0.5).to_le_bytes());
        }
        f.write_all(&block)?;
        done += n;
    }
    f.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

struct Measured {
    idle: Vec<f64>,
    peak: Vec<f64>,
    rate: f64,
}

fn run_case(args: &Args, m: &Model, size_mb: u64) -> Measured {
    let row_bytes = 4 * m.sample.iter().product::<usize>();
    let rows = ((size_mb * 1_000_000) as usize / row_bytes).max(m.batch as usize);
    let path = args.scratch.join(format!("idunno-bigdata-{}-{size_mb}.npy", m.name));
    let t = Instant::now();
    let bytes = write_set(&path, rows, m.sample).expect("writing the set");
    println!("  {} MB set: {rows} rows, {bytes} bytes, written in {:.1} s", size_mb, t.elapsed().as_secs_f64());
    let config = args.config.as_ref().map(|p| std::fs::read_to_string(p).expect("config"));
    let c = cluster(3, config.as_deref());
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid).collect();
    let idle: Vec<f64> = pids.iter().map(|p| rss_mib(*p).unwrap_or(0.0)).collect();
    let peak = Arc::new(std::sync::Mutex::new(idle.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pids) = (peak.clone(), stop.clone(), pids.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut p = peak.lock().unwrap();
                for (i, pid) in pids.iter().enumerate() {
                    p[i] = p[i].max(rss_mib(*pid).unwrap_or(0.0));
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let asset = idunno_ml::onnx::assets_dir().join(m.file);
    cli_json(&c, &["fs", "put", asset.to_str().unwrap(), "m.onnx"]);
    let t = Instant::now();
    cli_json(&c, &["fs", "put", path.to_str().unwrap(), "big.npy"]);
    println!("  stored in SDFS in {:.1} s", t.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&path);
    let after_put = peak.lock().unwrap().clone();
    let batch = m.batch.to_string();
    // One class per input: what the leader keeps of the results stays
    // small beside the inputs (a vector per input would be the size of the
    // inputs again, and results are not what this measures).
    let add =
        ["job", "add", "big", "--model", "m.onnx", "--inputs", "big.npy", "--batch-size", &batch, "--output", "class"];
    cli_json(&c, &add);
    cli_json(&c, &["job", "start", "big"]);
    let done = || cli_json(&c, &["job", "status", "big"])[0]["queries_done"].as_u64().unwrap_or(0);
    std::thread::sleep(Duration::from_secs_f64(args.seconds / 4.0));
    let (t0, q0) = (Instant::now(), done());
    std::thread::sleep(Duration::from_secs_f64(args.seconds));
    let (t1, q1) = (Instant::now(), done());
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak = peak.lock().unwrap().clone();
    let rate = (q1 - q0) as f64 / (t1 - t0).as_secs_f64();
    println!(
        "  peak RSS MiB while storing: {}",
        after_put.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(" / ")
    );
    Measured { idle, peak, rate }
}

/// Write `n` 28×28 images (IDX, bytes) and their labels (IDX, bytes:
/// a class from the image, so there is something to learn).
fn write_images(images: &Path, labels: &Path, n: usize) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::with_capacity(8 << 20, std::fs::File::create(images)?);
    let mut l = std::io::BufWriter::new(std::fs::File::create(labels)?);
    f.write_all(&[0, 0, 0x08, 3])?;
    for d in [n as u32, 28, 28] {
        f.write_all(&d.to_be_bytes())?;
    }
    l.write_all(&[0, 0, 0x08, 1])?;
    l.write_all(&(n as u32).to_be_bytes())?;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut img = [0u8; 784];
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let class = (x % 10) as usize;
        for (i, p) in img.iter_mut().enumerate() {
            // A bright band whose row is the class, over noise.
            *p = if i / 28 == 2 * class + 4 { 200 } else { ((x >> (i % 48)) & 0x3f) as u8 };
        }
        f.write_all(&img)?;
        l.write_all(&[class as u8])?;
    }
    f.flush()?;
    l.flush()
}

fn train_case(args: &Args) {
    let n = (args.train_mb * 1_000_000 / 784) as usize;
    let (images, labels) =
        (args.scratch.join("idunno-bigdata-images.idx"), args.scratch.join("idunno-bigdata-labels.idx"));
    let t = Instant::now();
    write_images(&images, &labels, n).expect("writing the images");
    println!("== training: {} MB of images, {n} samples, written in {:.1} s", args.train_mb, t.elapsed().as_secs_f64());
    let config = args.config.as_ref().map(|p| std::fs::read_to_string(p).expect("config"));
    let c = cluster(3, config.as_deref());
    let pids: Vec<u32> = c.nodes.iter().map(|n| n.pid).collect();
    let idle: Vec<f64> = pids.iter().map(|p| rss_mib(*p).unwrap_or(0.0)).collect();
    cli_json(&c, &["fs", "put", images.to_str().unwrap(), "train/images"]);
    cli_json(&c, &["fs", "put", labels.to_str().unwrap(), "train/labels"]);
    let _ = std::fs::remove_file(&images);
    let _ = std::fs::remove_file(&labels);
    let mut peak = pids.iter().map(|p| rss_mib(*p).unwrap_or(0.0)).collect::<Vec<f64>>();
    let train = [
        "train",
        "big",
        "--arch",
        "mlp",
        "--inputs",
        "train/images",
        "--labels",
        "train/labels",
        "--epochs",
        "1",
        "--batch-size",
        "256",
        "--workers",
        "3",
        "--out",
        "models/big",
        "--detach",
    ];
    cli_json(&c, &train);
    let step = || cli_json(&c, &["job", "status", "big"])[0]["step"].as_u64().unwrap_or(0);
    let sample = |peak: &mut Vec<f64>, secs: f64| {
        let until = Instant::now() + Duration::from_secs_f64(secs);
        while Instant::now() < until {
            for (i, pid) in pids.iter().enumerate() {
                peak[i] = peak[i].max(rss_mib(*pid).unwrap_or(0.0));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    sample(&mut peak, args.seconds / 4.0);
    let (t0, s0) = (Instant::now(), step());
    sample(&mut peak, args.seconds);
    let (t1, s1) = (Instant::now(), step());
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / ");
    let state = cli_json(&c, &["job", "status", "big"]);
    println!(
        "  {:.2} steps/s (batch 256, {} of {} steps done, state {}); RSS idle {} MiB, peak {} MiB (max {:.0}, target <= 500 MB = 477 MiB)",
        (s1 - s0) as f64 / (t1 - t0).as_secs_f64(),
        s1,
        n.div_ceil(256),
        state[0]["state"],
        fmt(&idle),
        fmt(&peak),
        peak.iter().cloned().fold(0.0, f64::max)
    );
}

fn main() {
    let args = Args::parse();
    idunno_bench::use_secret(Some(idunno_auth::Role::Client));
    if args.train_mb > 0 {
        train_case(&args);
    }
    for m in MODELS.iter().filter(|m| args.only.as_ref().is_none_or(|o| m.name.contains(o.as_str()))) {
        println!("== {} (batch {}, samples {:?} f32), 3 nodes, {} rounds", m.name, m.batch, m.sample, args.rounds);
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / ");
        // Per size: each round's rate and the largest peak above idle.
        let mut rates: Vec<Vec<f64>> = vec![Vec::new(); args.sizes_mb.len()];
        let mut above_max = vec![0f64; args.sizes_mb.len()];
        for round in 0..args.rounds.max(1) {
            let mut order: Vec<usize> = (0..args.sizes_mb.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let size = args.sizes_mb[i];
                let r = run_case(&args, m, size);
                let above: Vec<f64> = r.peak.iter().zip(&r.idle).map(|(p, i)| p - i).collect();
                above_max[i] = above.iter().cloned().fold(above_max[i], f64::max);
                rates[i].push(r.rate);
                println!(
                    "  round {}, {size} MB: {:.1} queries/s; RSS idle {} MiB, peak {} MiB, peak above idle {} MiB (max {:.0}, target <= 400 MB = 381 MiB)",
                    round + 1,
                    r.rate,
                    fmt(&r.idle),
                    fmt(&r.peak),
                    fmt(&above),
                    above.iter().cloned().fold(0.0, f64::max)
                );
            }
        }
        let base = median(&rates[0]);
        println!("  {}: median over the rounds", m.name);
        for (i, size) in args.sizes_mb.iter().enumerate() {
            println!(
                "  {size} MB: {:.1} queries/s ({:.2} of the {} MB set; rounds {}); peak above idle at most {:.0} MiB",
                median(&rates[i]),
                median(&rates[i]) / base,
                args.sizes_mb[0],
                fmt(&rates[i]),
                above_max[i]
            );
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
