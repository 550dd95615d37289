//! The whole-cluster simulation over several seeds (see the crate's
//! documentation for what it checks). `IDUNNO_SIM_SEED=N` runs one seed,
//! `IDUNNO_SIM_SEEDS=K` the first K.

use std::time::Instant;

use idunno_sim::{SimConfig, run};

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("IDUNNO_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("IDUNNO_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    (1..=count).collect()
}

#[test]
fn crashes_partitions_and_slow_links_lose_no_query() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
    let model = idunno_ml::onnx::assets_dir().join("models/tiny-add.onnx");
    assert!(model.exists(), "{} is missing: run scripts/assets", model.display());
    for seed in seeds() {
        let started = Instant::now();
        match run(&SimConfig::new(seed), &model) {
            Ok(o) => {
                println!(
                    "seed {seed}: ok in {:.1} s ({:.1} s simulated, {} steps): {} faults, {} terms with a leader, {} leaders, queries {:?}, jobs ran {:.1}..{:.1} s",
                    started.elapsed().as_secs_f64(),
                    o.sim_time.as_secs_f64(),
                    o.steps,
                    o.faults.len(),
                    o.terms,
                    o.leaders,
                    o.queries,
                    o.jobs_started.as_secs_f64(),
                    o.jobs_done.as_secs_f64(),
                );
                for f in &o.faults {
                    println!("  {f}");
                }
                assert!(o.faults.len() >= 5, "seed {seed}: too few faults to mean anything: {:?}", o.faults);
            }
            Err(failure) => panic!("{failure}"),
        }
    }
}
