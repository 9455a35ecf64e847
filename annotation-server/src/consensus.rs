//! Derived judgments: consensus rankings and inter-annotator agreement.
//! Nothing here is stored; it is recomputed from the immutable labels.
use crate::api::Consensus;
use std::collections::HashMap;

/// A labeler's choice on the pair (i, j) of a ranking: 0 = i better, 1 = tie, 2 = j better.
pub fn pair_choice(ranking: &[u32], i: usize, j: usize) -> u32 {
    match ranking[i].cmp(&ranking[j]) {
        std::cmp::Ordering::Less => 0,
        std::cmp::Ordering::Equal => 1,
        std::cmp::Ordering::Greater => 2,
    }
}

/// Competition ranking (1, 1, 3, ...) of scores where lower is better.
fn competition_ranks(scores: &[f64]) -> Vec<u32> {
    scores
        .iter()
        .map(|s| 1 + scores.iter().filter(|t| **t < *s - 1e-9).count() as u32)
        .collect()
}

/// Aggregates rankings (each: rank per position, 1 = best) by Borda count:
/// order by mean rank, equal means tie. `margins` are the labels' strength
/// margins. Returns `None` without labels.
pub fn consensus(rankings: &[Vec<u32>], margins: &[f64]) -> Option<Consensus> {
    let k = rankings.first()?.len();
    if k == 0 || rankings.iter().any(|r| r.len() != k) {
        return None;
    }
    let n = rankings.len() as f64;
    let mean_ranks: Vec<f64> = (0..k)
        .map(|p| rankings.iter().map(|r| r[p] as f64).sum::<f64>() / n)
        .collect();
    let ranking = competition_ranks(&mean_ranks);
    let (mut agree, mut total) = (0usize, 0usize);
    for r in rankings {
        for i in 0..k {
            for j in i + 1..k {
                total += 1;
                agree += usize::from(pair_choice(r, i, j) == pair_choice(&ranking, i, j));
            }
        }
    }
    let mean_margin = if margins.is_empty() {
        0.0
    } else {
        margins.iter().sum::<f64>() / margins.len() as f64
    };
    Some(Consensus {
        ranking,
        mean_ranks,
        labels: rankings.len(),
        mean_margin,
        agreement: if total == 0 {
            0.0
        } else {
            agree as f64 / total as f64
        },
    })
}

/// Krippendorff's α for nominal data. Each unit lists the values its coders
/// gave (missing values simply absent); units with fewer than two values are
/// not pairable and are ignored. `None` when undefined (no pairable values, or
/// every value identical so that expected disagreement is 0).
pub fn krippendorff_alpha_nominal(units: &[Vec<u32>]) -> Option<f64> {
    // coincidence matrix o[c][k]
    let mut o: HashMap<(u32, u32), f64> = HashMap::new();
    for unit in units.iter().filter(|u| u.len() >= 2) {
        let w = 1.0 / (unit.len() as f64 - 1.0);
        for (a, va) in unit.iter().enumerate() {
            for (b, vb) in unit.iter().enumerate() {
                if a != b {
                    *o.entry((*va, *vb)).or_default() += w;
                }
            }
        }
    }
    let mut n_c: HashMap<u32, f64> = HashMap::new();
    for ((c, _), v) in &o {
        *n_c.entry(*c).or_default() += v;
    }
    let n: f64 = n_c.values().sum();
    if n <= 1.0 {
        return None;
    }
    let observed: f64 = o.iter().filter(|((c, k), _)| c != k).map(|(_, v)| v).sum();
    let mut expected = 0.0;
    for (c, nc) in &n_c {
        for (k, nk) in &n_c {
            if c != k {
                expected += nc * nk;
            }
        }
    }
    if expected == 0.0 {
        return None;
    }
    Some(1.0 - (n - 1.0) * observed / expected)
}

/// Pairwise units of one comparison for α: one unit per response pair, holding
/// each label's choice on it.
pub fn pair_units(rankings: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let Some(k) = rankings.first().map(|r| r.len()) else {
        return vec![];
    };
    let mut units = vec![];
    for i in 0..k {
        for j in i + 1..k {
            units.push(
                rankings
                    .iter()
                    .filter(|r| r.len() == k)
                    .map(|r| pair_choice(r, i, j))
                    .collect(),
            );
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_matches_krippendorffs_published_example() {
        // Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability",
        // reliability data of 4 observers on 12 units (missing values left out);
        // nominal alpha = 0.743.
        let units: Vec<Vec<u32>> = vec![
            vec![1, 1, 1],
            vec![2, 2, 3, 2],
            vec![3, 3, 3, 3],
            vec![3, 3, 3, 3],
            vec![2, 2, 2, 2],
            vec![1, 2, 3, 4],
            vec![4, 4, 4, 4],
            vec![1, 1, 2, 1],
            vec![2, 2, 2, 2],
            vec![5, 5, 5],
            vec![1, 1],
            vec![3],
        ];
        let a = krippendorff_alpha_nominal(&units).unwrap();
        assert!((a - 0.743).abs() < 5e-4, "alpha = {a}");
    }

    #[test]
    fn alpha_edge_cases() {
        // perfect agreement with variation
        assert_eq!(
            krippendorff_alpha_nominal(&[vec![0, 0], vec![2, 2]]),
            Some(1.0)
        );
        // no variation at all: undefined
        assert_eq!(krippendorff_alpha_nominal(&[vec![0, 0], vec![0, 0]]), None);
        // nothing pairable
        assert_eq!(krippendorff_alpha_nominal(&[vec![0], vec![2]]), None);
        // systematic disagreement is below zero
        assert!(krippendorff_alpha_nominal(&[vec![0, 2], vec![2, 0]]).unwrap() < 0.0);
    }

    #[test]
    fn borda_consensus_with_ties_and_agreement() {
        // three labelers on three responses
        let r = vec![vec![1, 2, 3], vec![1, 3, 2], vec![2, 1, 3]];
        let c = consensus(&r, &[3.0, 2.0, 1.0]).unwrap();
        // mean ranks 4/3, 2, 8/3
        assert_eq!(c.ranking, vec![1, 2, 3]);
        assert!((c.mean_ranks[0] - 4.0 / 3.0).abs() < 1e-12);
        assert_eq!(c.mean_margin, 2.0);
        // 9 (labeler, pair) choices; label 2 flips (1,2), label 3 flips (0,1): 7 agree
        assert!((c.agreement - 7.0 / 9.0).abs() < 1e-12);

        let tie = consensus(&[vec![1, 2], vec![2, 1]], &[0.0, 0.0]).unwrap();
        assert_eq!(tie.ranking, vec![1, 1]);
        assert_eq!(tie.agreement, 0.0);
        assert!(consensus(&[], &[]).is_none());
    }

    #[test]
    fn pair_units_hold_every_label() {
        let u = pair_units(&[vec![1, 2], vec![2, 1], vec![1, 1]]);
        assert_eq!(u, vec![vec![0, 2, 1]]);
    }
}
