//! Property fuzzing of the results file reader (`<job>.results` in SDFS,
//! read back by `job results` and by a new leader): real rows, mutated as
//! text, with hostile numbers and outputs. Properties: no panic, at most
//! [`bound`] bytes allocated, and only rows of counted queries kept. The
//! long run is `PROPTEST_CASES=1000000 cargo test --release -p idunno-jobs
//! --test fuzz` (figures in docs/limits.md).

use idunno_jobs::results::{Row, Table};
use idunno_testkit::alloc::{Counting, peak_during};
use proptest::prelude::*;
use serde_json::json;

#[global_allocator]
static ALLOC: Counting = Counting;

fn bound(len: usize) -> usize {
    16 * len + (256 << 10)
}

fn row() -> impl Strategy<Value = Row> {
    let n = prop_oneof![4 => 0..20u64, 1 => Just(u64::MAX)];
    let output = prop_oneof![
        (0..10i64).prop_map(|c| json!(c)),
        prop::collection::vec(-2.0..2.0f32, 0..4).prop_map(|v| json!(v)),
        Just(json!(null)),
        Just(json!({"nested": [[[]]]})),
    ];
    (n.clone(), n.clone(), n, output).prop_map(|(query, pass, input, output)| Row { query, pass, input, output })
}

fn results_file() -> impl Strategy<Value = Vec<u8>> {
    (prop::collection::vec(row(), 0..12), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4))
        .prop_map(|(rows, flips)| {
            let mut bytes = Table::default().render_with(&rows);
            for (at, b) in flips {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] = b;
                }
            }
            bytes
        })
}

proptest! {
    #[test]
    fn results_rows(bytes in results_file(), counted in prop_oneof![0..20u64, Just(u64::MAX)]) {
        let (parsed, peak) = peak_during(|| Table::parse(&bytes, counted));
        prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated reading {} bytes", bytes.len());
        if let Ok(t) = parsed {
            prop_assert!(t.rows.values().all(|r| r.query <= counted));
            prop_assert!(t.rows.iter().all(|(input, r)| *input == r.input));
        }
    }
}
