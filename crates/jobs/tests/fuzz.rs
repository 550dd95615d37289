//! Property fuzzing of the results file reader (`<job>.results` and its
//! segments in SDFS, read back by `job results` and by compaction): real
//! files of both layouts, with hostile numbers, flipped bytes and cut
//! short, fed to the streaming reader in pieces of any size. Properties:
//! no panic, at most [`bound`] bytes allocated, and a file that reads
//! whole gives back exactly the rows written when it was not changed. The
//! long run is `PROPTEST_CASES=1000000 cargo test --release -p idunno-jobs
//! --test fuzz` (figures in docs/limits.md).

use idunno_jobs::results::{Layout, Output, Reader, Row, Writer};
use idunno_testkit::alloc::{Counting, peak_during};
use proptest::prelude::*;

#[global_allocator]
static ALLOC: Counting = Counting;

fn bound(len: usize) -> usize {
    16 * len + (256 << 10)
}

fn file() -> impl Strategy<Value = (Layout, Vec<Row>)> {
    let n = prop_oneof![4 => 0..20u64, 1 => Just(u64::MAX)];
    let layout = prop_oneof![Just(Layout::Class), (1..5u32).prop_map(Layout::Vector)];
    layout.prop_flat_map(move |layout| {
        let output = match layout {
            Layout::Class => any::<i64>().prop_map(Output::Class).boxed(),
            Layout::Vector(w) => prop::collection::vec(any::<f32>(), w as usize).prop_map(Output::Vector).boxed(),
        };
        let row = (n.clone(), n.clone(), n.clone(), output).prop_map(|(query, pass, input, output)| Row {
            query,
            pass,
            input,
            output,
        });
        (Just(layout), prop::collection::vec(row, 0..12))
    })
}

fn mutated() -> impl Strategy<Value = (Vec<u8>, Vec<Row>, bool, usize)> {
    let flips = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4);
    (file(), flips, prop::option::of(any::<prop::sample::Index>()), 1..40usize).prop_map(
        |((layout, rows), flips, cut, piece)| {
            let mut w = Writer::new(layout);
            rows.iter().for_each(|r| w.push(r));
            let mut bytes = w.into_bytes();
            let original = bytes.clone();
            for (at, b) in flips {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
            if let Some(at) = cut {
                bytes.truncate(at.index(bytes.len() + 1));
            }
            let same = bytes == original;
            (bytes, rows, same, piece)
        },
    )
}

proptest! {
    #[test]
    fn results_rows((bytes, rows, same, piece) in mutated()) {
        let (read, peak) = peak_during(|| {
            let mut r = Reader::default();
            let mut got = Vec::new();
            for p in bytes.chunks(piece) {
                got.extend(r.feed(p)?);
            }
            r.finish().map(|()| got)
        });
        prop_assert!(peak <= bound(bytes.len()), "{peak} bytes allocated reading {} bytes", bytes.len());
        if same {
            // NaN outputs compare unequal: compare the encodings.
            let enc = |rows: &[Row]| format!("{:?}", rows.iter().map(|r| (r.query, r.pass, r.input, match &r.output {
                Output::Class(c) => vec![*c as u64],
                Output::Vector(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
            })).collect::<Vec<_>>());
            prop_assert_eq!(enc(&read.expect("an unchanged file reads")), enc(&rows));
        }
    }
}
