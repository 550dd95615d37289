//! `idunno demo`, the main job of the README, end to end: real nodes, real
//! models, real kills. Its output is the evidence.

mod common;

use std::time::Duration;

use common::{free_ports, run};

#[test]
fn demo_tells_the_whole_story() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let base = free_ports(10).to_string();
    let out = run(&["demo", "--dir", dir.to_str().unwrap(), "--base-port", &base], Duration::from_secs(300));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    // Equal query rates before and after each kill.
    let ratios: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("max/min - 1 = ").nth(1))
        .map(|r| r.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ratios.len(), 4, "three tables and the summary: {text}");
    assert!(ratios.iter().all(|r| *r <= 0.2), "rate ratios {ratios:?}\n{text}");
    assert!(text.contains("both listed dead after"), "{text}");
    assert!(text.contains("a new leader serves after"), "{text}");
    // The four measurements were all taken (their targets are the
    // benchmark's business, not a timed test's): the second job ran, and
    // the rates came back after both kills.
    for n in ["  2. ", "  3. ", "  4. "] {
        let line = text.lines().find(|l| l.starts_with(n)).unwrap_or_else(|| panic!("no measurement {n}: {text}"));
        assert!(!line.contains("not seen"), "{line}");
    }
    // C5: in steady state (a full window after each change) the fair
    // split's prediction is the measured rate, within 25%.
    let errors: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("predicted/measured - 1 = ").nth(1))
        .map(|x| x.trim().parse().unwrap())
        .collect();
    assert_eq!(errors.len(), 3, "before the kills, after the workers', after the leader's: {text}");
    // Within 25% here: in CI, beside other clusters on 2 cores, the
    // prediction ran 9-17% above the measured rate (0.09, 0.086, 0.168
    // in one run); alone it is within 7%. bench/fairness measures it
    // in steady state over many trials.
    assert!(errors.iter().all(|e| e.abs() <= 0.25), "predicted/measured - 1: {errors:?}\n{text}");
    // One class per photo, the espresso first.
    let rows: Vec<&str> = text.lines().filter(|l| l.contains(" class ")).collect();
    assert_eq!(rows.len(), 14, "{text}");
    assert!(rows[0].contains("coffee.png") && rows[0].contains("967"), "{}", rows[0]);
    assert!(text.contains("accuracy 100%"), "{text}");
    // The photos' mean loss (EfficientNet is sure of them) and the
    // processing time's variance.
    let photos = text.lines().find(|l| l.starts_with("  photos: ")).unwrap_or_else(|| panic!("no photos line: {text}"));
    let loss: f64 = photos.split("mean loss ").nth(1).and_then(|r| r.split(';').next()).unwrap().parse().unwrap();
    assert!(loss > 0.0 && loss < 1.0, "{photos}");
    assert!(photos.contains("ms²)"), "{photos}");
    // The cluster trained an MNIST classifier, and serving it scores what
    // training measured.
    let line = text.lines().find(|l| l.contains("served: ")).unwrap_or_else(|| panic!("no served accuracy: {text}"));
    let pcts: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.trim_end_matches([';', ',']).strip_suffix('%'))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pcts.len(), 2, "{line}");
    assert!(pcts[0] > 90.0 && pcts[0] == pcts[1], "{line}");
    // Nothing left running.
    assert!(text.contains("stopped 2 node(s)"), "{text}");
}
