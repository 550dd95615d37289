//! Input sets kept as several files: `job add --inputs` (or `--labels`)
//! names either one file, a name pattern (`data/imagenet/shard-*.npy`:
//! `*` any run of characters, `?` one; the files it matches in name
//! order), or a `.shards` list in SDFS (one file name per line, in order;
//! blank lines and `#` comments skipped). Every shard's version is pinned
//! and its header read; all must hold samples of the same shape and type.

use idunno_ml::layout::Layout;
use idunno_state::{ClusterState, Shard};
use tonic::Status;

use crate::Jobs;
use crate::validate::{latest, layout, pinned};

/// Shards one input set may have.
pub const MAX_SHARDS: usize = 10_000;

/// Bytes a `.shards` list may take.
pub const MAX_LIST_BYTES: u64 = 1 << 20;

/// An input set as `job add` found it: its files (one, unsharded, has no
/// shards) and its layout as a whole (the shards' samples added up).
pub(crate) struct Set {
    pub version: u64,
    pub shards: Vec<Shard>,
    pub layout: Layout,
}

/// Whether `name` matches `pattern` (`*`: any run, `?`: one character).
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j) = (0, 0);
    // Where the last `*` was, and the name position it stands for so far.
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            // Let the last `*` take one more character.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// The names listed in a `.shards` file, in order.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(str::to_string).collect()
}

fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// The files `name` stands for, in order, with their pinned versions.
async fn files(jobs: &Jobs, state: &ClusterState, name: &str, what: &str) -> Result<Vec<(String, u64)>, Status> {
    if is_pattern(name) {
        let prefix: String = name.chars().take_while(|c| !matches!(c, '*' | '?')).collect();
        let mut found = Vec::new();
        for (file, e) in state.namespace.files.range(prefix.clone()..) {
            if !file.starts_with(&prefix) {
                break;
            }
            let Some(v) = e.versions.last() else { continue };
            if matches(name, file) {
                if found.len() == MAX_SHARDS {
                    return Err(Status::invalid_argument(format!(
                        "{what} {name} matches more than {MAX_SHARDS} files; at most {MAX_SHARDS} shards are supported"
                    )));
                }
                found.push((file.clone(), v.version));
            }
        }
        if found.is_empty() {
            return Err(Status::not_found(format!("{what} {name} matches no file in SDFS")));
        }
        return Ok(found);
    }
    let version = latest(state, name, what)?;
    if !name.ends_with(".shards") {
        return Ok(vec![(name.to_string(), version)]);
    }
    let v = pinned(state, name, version)?;
    if v.size > MAX_LIST_BYTES {
        return Err(Status::invalid_argument(format!(
            "{name} is {} bytes; a .shards list may take at most {MAX_LIST_BYTES}",
            v.size
        )));
    }
    let bytes = jobs.sdfs.read_range(name, v, 0, v.size).await.map_err(|e| Status::unavailable(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| Status::invalid_argument(format!("{name} is not text")))?;
    let listed = parse_list(&text);
    if listed.is_empty() {
        return Err(Status::invalid_argument(format!("{name} lists no shard")));
    }
    if listed.len() > MAX_SHARDS {
        return Err(Status::invalid_argument(format!(
            "{name} lists {} shards; at most {MAX_SHARDS} are supported",
            listed.len()
        )));
    }
    let mut out = Vec::with_capacity(listed.len());
    for shard in listed {
        let version = latest(state, &shard, &format!("shard {shard} (listed in {name}) of"))
            .map_err(|s| Status::not_found(format!("{name} lists {shard}, which is not in SDFS: {}", s.message())))?;
        out.push((shard, version));
    }
    Ok(out)
}

/// The input set (or labels) `name` names: one file, or shards that all
/// hold samples of the same shape and type (refused otherwise, naming
/// the first shard that differs and how).
pub(crate) async fn resolve(jobs: &Jobs, state: &ClusterState, name: &str, what: &str) -> Result<Set, Status> {
    let found = files(jobs, state, name, what).await?;
    let sharded = found.len() > 1 || is_pattern(name) || name.ends_with(".shards");
    if !sharded {
        let (file, version) = &found[0];
        return Ok(Set { version: *version, shards: Vec::new(), layout: layout(jobs, state, file, *version).await? });
    }
    let mut whole: Option<(String, Layout)> = None;
    let mut shards = Vec::with_capacity(found.len());
    for (file, version) in found {
        let l = layout(jobs, state, &file, version).await?;
        if l.shape.is_empty() {
            return Err(Status::invalid_argument(format!("shard {file} of {name} is a scalar, not samples")));
        }
        shards.push(Shard { name: file.clone(), version, samples: l.samples() as u64 });
        match &mut whole {
            None => whole = Some((file, l)),
            Some((first, w)) => {
                if w.dtype != l.dtype || w.sample_shape() != l.sample_shape() {
                    return Err(Status::invalid_argument(format!(
                        "shard {file} of {name} holds samples {:?} of {}, but shard {first} holds {:?} of {}: every shard must hold samples of one shape and type",
                        l.sample_shape(),
                        l.dtype,
                        w.sample_shape(),
                        w.dtype
                    )));
                }
                w.shape[0] = w.shape[0].saturating_add(l.samples());
            }
        }
    }
    let (_, layout) = whole.ok_or_else(|| Status::not_found(format!("{what} {name} has no shard")))?;
    Ok(Set { version: 0, shards, layout })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_a_shell() {
        assert!(matches("data/shard-*.npy", "data/shard-0001.npy"));
        assert!(matches("data/shard-*.npy", "data/shard-.npy"));
        assert!(!matches("data/shard-*.npy", "data/shard-0001.npz"));
        assert!(matches("d/s-??.npy", "d/s-07.npy"));
        assert!(!matches("d/s-??.npy", "d/s-007.npy"));
        assert!(matches("*a*b*", "xxaxxbxx"));
        assert!(!matches("*a*b", "xxaxxbxxc"));
        assert!(matches("*", ""));
        assert!(matches("ü*", "über"));
    }

    #[test]
    fn lists_skip_blank_lines_and_comments() {
        let text = "# ImageNet, in order\n\ndata/a.npy\n  data/b.npy  \n# done\n";
        assert_eq!(parse_list(text), vec!["data/a.npy", "data/b.npy"]);
    }
}
