//! Partitioners: every sample lands in exactly one partition, seeds reproduce, and Dirichlet skew
//! grows as alpha falls.

use fedmesh_learning::partition::histograms;
use fedmesh_learning::{DataSource, Partitioner};

fn mnist_labels() -> Vec<usize> {
    DataSource::parse("mnist5k", None).unwrap().load(None).unwrap().labels
}

fn assert_exact_cover(parts: &[Vec<usize>], len: usize) {
    let mut seen = vec![0u32; len];
    for part in parts {
        for &index in part {
            seen[index] += 1;
        }
    }
    assert!(seen.iter().all(|&count| count == 1), "some sample is missing or repeated");
}

/// Mean over clients of the share of a client's samples that belong to its most common class:
/// 0.1 for a perfectly balanced 10-class client, 1.0 for a single-class client.
fn mean_top_class_share(labels: &[usize], parts: &[Vec<usize>]) -> f64 {
    let shares: Vec<f64> = histograms(labels, parts, 10)
        .iter()
        .map(|h| *h.iter().max().unwrap() as f64 / h.iter().sum::<usize>().max(1) as f64)
        .collect();
    shares.iter().sum::<f64>() / shares.len() as f64
}

#[test]
fn every_partitioner_covers_every_sample_exactly_once_and_leaves_no_client_empty() {
    let labels = mnist_labels();
    for partitioner in ["iid", "dirichlet:0.1", "dirichlet:1.0", "shards:2"] {
        let partitioner: Partitioner = partitioner.parse().unwrap();
        for clients in [1, 3, 8, 50] {
            let parts = partitioner.partition(&labels, clients, 7).unwrap();
            assert_eq!(parts.len(), clients);
            assert_exact_cover(&parts, labels.len());
            assert!(parts.iter().all(|p| !p.is_empty()), "{partitioner:?} left a client empty");
        }
    }
}

#[test]
fn the_same_seed_gives_the_same_partition_and_another_seed_another() {
    let labels = mnist_labels();
    let partitioner: Partitioner = "dirichlet:0.5".parse().unwrap();
    let a = partitioner.partition(&labels, 8, 1).unwrap();
    assert_eq!(a, partitioner.partition(&labels, 8, 1).unwrap());
    assert_ne!(a, partitioner.partition(&labels, 8, 2).unwrap());
}

#[test]
fn dirichlet_skew_grows_as_alpha_falls() {
    let labels = mnist_labels();
    let iid = mean_top_class_share(&labels, &Partitioner::Iid.partition(&labels, 10, 3).unwrap());
    let skews: Vec<f64> = [100.0, 1.0, 0.1]
        .iter()
        .map(|&alpha| {
            mean_top_class_share(
                &labels,
                &Partitioner::Dirichlet { alpha }.partition(&labels, 10, 3).unwrap(),
            )
        })
        .collect();
    assert!(iid < 0.15, "IID clients should be balanced, top share {iid}");
    assert!(skews[0] < skews[1] && skews[1] < skews[2], "skew must grow as alpha falls: {skews:?}");
    assert!(skews[2] > 0.5, "alpha 0.1 should make most clients dominated by one class: {skews:?}");
}

#[test]
fn shards_give_each_client_about_k_labels() {
    let labels = mnist_labels();
    let parts = Partitioner::Shards { k: 2 }.partition(&labels, 10, 5).unwrap();
    for histogram in histograms(&labels, &parts, 10) {
        let classes = histogram.iter().filter(|&&c| c > 0).count();
        assert!((1..=4).contains(&classes), "a 2-shard client holds {classes} classes");
    }
}

#[test]
fn bad_partition_names_are_refused() {
    for bad in ["", "dirichlet", "dirichlet:0", "dirichlet:-1", "shards:0", "random"] {
        assert!(bad.parse::<Partitioner>().is_err(), "`{bad}` was accepted");
    }
    assert!(Partitioner::Iid.partition(&[0, 1], 0, 0).is_err());
}
